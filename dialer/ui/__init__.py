"""The sales-ops web console, served by the daemon under ``/ui/``."""

from __future__ import annotations

from dialer.ui.routes import Console, mount

__all__ = ["Console", "mount"]
