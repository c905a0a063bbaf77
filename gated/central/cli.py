"""`gated central …`: run the service, migrate, enrol devices, make the key, drop old months.

Only argparse is imported here; the central extra's packages (psycopg, jsonschema) are imported
inside the commands, so `gated --help` works on a gate that does not have them.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    """Add `gated central` and its subcommands to the `gated` parser."""
    central = sub.add_parser("central", help="the central service many gates sync into "
                                             "(needs `pip install gated[central]`)")
    commands = central.add_subparsers(dest="central_command", required=True, metavar="COMMAND")

    def command(name: str, help_: str, func: Any) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help_)
        p.add_argument("--config", required=True, help="central.toml")
        p.set_defaults(func=func)
        return p

    command("run", "run the service: MQTT and HTTP ingest into PostgreSQL", cmd_run)
    command("migrate", "apply pending schema migrations (as the owner role)", cmd_migrate)
    command("keygen", "create the service's Ed25519 key if missing; print its public half",
            cmd_keygen)
    p = command("enrol", "enrol (or re-key) a device; prints its HTTP bearer token once",
                cmd_enrol)
    p.add_argument("--tenant", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--public-key", default=None,
                   help="the device key as `gated keys show` prints it (base64)")
    p = command("retention", "drop monthly partitions older than [retention] months",
                cmd_retention)
    p.add_argument("--months", type=int, default=None)
    from gated.central.viewer.commands import add_viewer_commands

    add_viewer_commands(commands)  # `gated central viewer` and `gated central user …`


def _config(args: argparse.Namespace) -> Any:
    from gated.central.config import load

    return load(args.config)


def _owner(config: Any) -> Any:
    import psycopg

    from gated.errors import ConfigError

    if not config.owner_url:
        raise ConfigError("[database] owner_url is required for this command")
    return psycopg.connect(config.owner_url, autocommit=True)


def _snapshot_store(config: Any) -> Any:
    """The configured snapshot store ([snapshots] backend); ConfigError when it is wrong."""
    from gated.central.snapshots import open_store
    from gated.errors import ConfigError

    try:
        return open_store(config.snapshots, config.snapshots_path)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply pending migrations."""
    from gated.central.migrate import migrate

    with _owner(_config(args)) as conn:
        for name in migrate(conn):
            print(f"applied {name}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    """Create (or load) the service key and print what devices put in service_public_keys."""
    import base64

    from gated.sync.signing import kid_of, load_or_create_key, public_raw

    key = load_or_create_key(_config(args).key_file)
    print(json.dumps({"public_key": base64.b64encode(public_raw(key)).decode(),
                      "kid": kid_of(key)}))
    return 0


def cmd_enrol(args: argparse.Namespace) -> int:
    """Enrol a device and print its bearer token (shown once, stored hashed)."""
    from gated.central.admin import enrol_device

    with _owner(_config(args)) as conn:
        token = enrol_device(conn, args.tenant, args.device, args.site, args.public_key)
    print(json.dumps({"tenant_id": args.tenant, "device_id": args.device, "token": token}))
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    """Drop whole monthly partitions that ended before the retention window."""
    config = _config(args)
    months = args.months if args.months is not None else config.retention_months
    with _owner(config) as conn:
        rows = conn.execute(
            "SELECT gated_drop_partitions_before((date_trunc('month', now())"
            " - make_interval(months => %s))::date)", (months,)).fetchall()
    for (name,) in rows:
        print(f"dropped {name}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run MQTT and HTTP ingest until SIGTERM or SIGINT."""
    import asyncio
    import dataclasses

    from gated.central.ingest_http import HttpIngest, serve
    from gated.central.ingest_mqtt import MqttIngest, MqttSettings
    from gated.central.store import Store
    from gated.central.viewer.serve import load_settings, start_viewer
    from gated.sync.signing import load_or_create_key

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = _config(args)
    viewer_settings, viewer_config = load_settings(args.config, config.snapshots_path)
    snapshots = _snapshot_store(config)
    viewer_config = dataclasses.replace(viewer_config, snapshot_store=snapshots)
    key = load_or_create_key(config.key_file)
    store = Store(config.database_url, key, instance=config.instance,
                  prepared_statements=config.prepared_statements).open()
    mqtt = None
    if config.mqtt_enabled:
        mqtt = MqttIngest(store, MqttSettings(**config.mqtt)).start()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        runner = None
        if config.http_enabled:
            runner = await serve(HttpIngest(store, snapshots),
                                 config.http_listen, config.http_port)
        viewer = None
        if viewer_settings.enabled:  # the log viewer on its own listener ([viewer])
            viewer = await start_viewer(config.database_url, viewer_settings, viewer_config)
        print("ready", flush=True)
        await done.wait()
        if viewer is not None:
            await viewer.close()
        if runner is not None:
            await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        if mqtt is not None:
            mqtt.stop()
        store.close()
    return 0
