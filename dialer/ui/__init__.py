"""The sales-ops web console, served by the daemon under ``/ui/``."""

from __future__ import annotations

from dialer.ui.console import Console
from dialer.ui.routes import mount

__all__ = ["Console", "mount"]
