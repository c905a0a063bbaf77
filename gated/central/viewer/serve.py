"""Serving the viewer: its `[viewer]` section of central.toml, its listener and its pool.

The viewer listens on its own address and port, apart from HTTP ingest: devices and
people reach the service through different networks and proxies, and a flood of
uploads must not share a connection limit with the people reading the log.
`start_viewer` is what `gated central run` calls beside ingest; `gated central viewer`
runs the viewer alone (a second instance for readers, or a viewer-only host).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from gated.central.viewer.app import ViewerConfig, make_viewer_app
from gated.errors import ConfigError

__all__ = ["RunningViewer", "ViewerSettings", "cmd_viewer", "load_settings", "start_viewer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ViewerSettings:
    """Where the viewer listens ([viewer] enabled, listen, port, tls_cert, tls_key)."""

    enabled: bool = False  # served by `gated central run` only when asked for
    listen: str = "127.0.0.1"  # behind a TLS-terminating proxy, or give tls_cert/tls_key
    port: int = 8090
    tls_cert: str = ""
    tls_key: str = ""
    pool_max: int = 8


_LISTEN_KEYS = {f.name for f in fields(ViewerSettings)}
_APP_KEYS = {f.name for f in fields(ViewerConfig)} - {"snapshot_dir", "snapshot_store", "tls"}


def load_settings(path: str | Path, snapshots_path: str) -> tuple[ViewerSettings, ViewerConfig]:
    """The [viewer] section of central.toml (ConfigError names a wrong key)."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("viewer", {})
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [viewer] must be a table")
    unknown = set(raw) - _LISTEN_KEYS - _APP_KEYS
    if unknown:
        raise ConfigError(f"{path}: [viewer] unknown keys {sorted(unknown)}")
    try:
        settings = ViewerSettings(**{k: v for k, v in raw.items() if k in _LISTEN_KEYS})
        config = ViewerConfig(snapshot_dir=snapshots_path, tls=bool(settings.tls_cert),
                              **{k: v for k, v in raw.items() if k in _APP_KEYS})
    except TypeError as err:
        raise ConfigError(f"{path}: [viewer] {err}") from err
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError(f"{path}: [viewer] tls_cert and tls_key: give both, or neither")
    if not 0 <= int(settings.port) < 65536:  # 0: any free port (tests)
        raise ConfigError(f"{path}: [viewer] port: 0 to 65535")
    for key in ("session_idle_s", "session_max_s", "login_window_s", "lockout_s",
                "online_after_s"):
        if not isinstance(getattr(config, key), int | float) or getattr(config, key) <= 0:
            raise ConfigError(f"{path}: [viewer] {key}: a positive number of seconds")
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(config.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as err:
        raise ConfigError(f"{path}: [viewer] timezone: unknown {config.timezone!r}") from err
    return settings, config


@dataclass
class RunningViewer:
    """A started viewer: close() stops the listener, then the pool."""

    runner: web.AppRunner
    pool: AsyncConnectionPool
    port: int

    async def close(self) -> None:
        """Stop serving and close the database connections."""
        await self.runner.cleanup()
        await self.pool.close()


async def start_viewer(database_url: str, settings: ViewerSettings,
                       config: ViewerConfig) -> RunningViewer:
    """Open the pool (as the service role) and listen; the running viewer."""
    # prepare_threshold=None: no server-side prepared statements, so a transaction-pooling
    # pooler between the viewer and PostgreSQL is safe (as ingest's pool).
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=settings.pool_max, open=False,
                               kwargs={"prepare_threshold": None}, name="gated-viewer")
    await pool.open(wait=True, timeout=30)
    context = None
    if settings.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    runner = web.AppRunner(make_viewer_app(pool, config), access_log=None,
                           handle_signals=False, shutdown_timeout=1.0)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.listen, settings.port, ssl_context=context,
                           reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        await pool.close()
        raise
    port = runner.addresses[0][1] if runner.addresses else settings.port
    log.info("log viewer on %s://%s:%d/", "https" if context else "http", settings.listen, port)
    return RunningViewer(runner, pool, port)


def cmd_viewer(args: argparse.Namespace) -> int:
    """`gated central viewer --config central.toml`: the log viewer alone, until SIGTERM."""
    from gated.central.config import load

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    central = load(args.config)
    settings, config = load_settings(args.config, central.snapshots_path)
    if central.snapshots.get("backend", "local") == "s3":
        from dataclasses import replace

        from gated.central.snapshots import configured_store

        config = replace(config, snapshot_store=configured_store(central))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        viewer = await start_viewer(central.database_url, settings, config)
        print(f"viewer ready on port {viewer.port}", flush=True)
        try:
            await done.wait()
        finally:
            await viewer.close()

    asyncio.run(main())
    return 0
