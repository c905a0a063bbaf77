"""The central service's log viewer: access and audit events of every gate of a tenant.

`make_viewer_app(pool, ViewerConfig(...))` builds the aiohttp application; docs/central.md
("Viewer") says how it is run, who may see what and how tenants are kept apart.
"""

from gated.central.viewer.app import ViewerConfig, make_viewer_app

__all__ = ["ViewerConfig", "make_viewer_app"]
