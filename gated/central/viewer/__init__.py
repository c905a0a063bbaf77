"""The central service's log viewer: access and audit events of every gate of a tenant.

`make_viewer_app(pool, ViewerConfig(...))` builds the aiohttp application; docs/central.md
("Viewer") says how it is run, who may see what and how tenants are kept apart. Nothing is
imported until asked for, so `gated --help` needs neither aiohttp's app nor psycopg here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ViewerConfig", "make_viewer_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from gated.central.viewer import app

        return getattr(app, name)
    raise AttributeError(name)
