"""UEFI firmware facts (being written)."""

from __future__ import annotations
