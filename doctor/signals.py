"""How kvmdoctor stops on SIGTERM: as on Ctrl-C, by an exception raised where the process is,
so that every clean-up on the way out runs (a probe's qdiscs and trace instance, a snapshot's
unpacked files, temporary output files)."""

from __future__ import annotations


class Terminated(BaseException):
    """SIGTERM arrived; the command line turns it into exit code 143."""
