"""kvmdoctor's built-in checks, one module per area, registered through the
`kvmdoctor.checks` entry-point group like any third-party plugin."""
