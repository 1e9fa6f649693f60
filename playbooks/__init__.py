"""Remediation playbooks (YAML), shipped as package data. See docs/architecture.md."""
