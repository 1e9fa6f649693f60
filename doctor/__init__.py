"""kvmdoctor: diagnostics and troubleshooting for KVM/libvirt hosts."""

from __future__ import annotations

__version__ = "0.1.0"
