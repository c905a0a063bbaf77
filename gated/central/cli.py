"""`gated central …`: run the service, migrate, enrol devices, make the key, drop old months.

Only argparse is imported here; the central extra's packages (psycopg, jsonschema) are imported
inside the commands, so `gated --help` works on a gate that does not have them.
"""

from __future__ import annotations

import argparse
import gc
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
    command("erasures", "apply the devices' lawful erasures to stored rows and pictures "
                        "(as the owner role)", cmd_erasures)
    add_downlink_commands(commands, command)
    from gated.central.viewer.commands import add_viewer_commands

    add_viewer_commands(commands)  # `gated central viewer` and `gated central user …`


def add_downlink_commands(commands: Any, command: Any) -> None:
    """`gated central rules publish` and `gated central command` (docs/central.md, Downlink)."""
    rules = commands.add_parser("rules", help="rule sets for the gates: publish")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    p = rules_sub.add_parser("publish", help="publish a rule file to a site's or a device's "
                                             "gates (signed bundles, announced on P/rules)")
    p.add_argument("--config", required=True, help="central.toml")
    p.add_argument("--tenant", required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--site", help="every enrolled device of this site")
    where.add_argument("--device", help="this one device")
    p.add_argument("--tz", default="UTC", help="zone of naive times in the file (default UTC)")
    p.add_argument("file", help="a gated-rules JSON file, a CSV file or a folder of CSVs")
    p.set_defaults(func=cmd_rules_publish)
    p = command("command", "sign and send a remote command to a device (P/commands)",
                cmd_command)
    p.add_argument("--tenant", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("action", help="open, hold, release, lockdown_on, lockdown_off, "
                                  "reload_rules or sync_rules")
    p.add_argument("--lane", default=None, help="the lane (open, hold and release need one)")
    p.add_argument("--reason", default=None, help="kept in the device's audit row")
    p.add_argument("--ttl", type=float, default=60.0, help="seconds until it expires (1-300)")
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for the device's result and print it")


def cmd_rules_publish(args: argparse.Namespace) -> int:
    """Validate and store a rule set, sign each device's bundles, announce them on P/rules."""
    import psycopg

    from gated.central import downlink
    from gated.sync.signing import load_or_create_key
    from gated.unix_user import name_of

    config = _config(args)
    document = downlink.load_rule_file(args.file, args.tz)  # RulesError lists every problem
    account = downlink.broker_account(args.config, config.mqtt) if config.mqtt_enabled else None
    key = load_or_create_key(config.key_file)
    scope, scope_id = ("site", args.site) if args.site else ("device", args.device)
    with psycopg.connect(config.database_url, autocommit=True) as conn:
        version, devices = downlink.publish_rules(conn, key, args.tenant, scope, scope_id,
                                                  document, f"unix:{name_of()}")
    out: dict[str, Any] = {"tenant_id": args.tenant, "scope": scope, "scope_id": scope_id,
                           "rule_set_version": version,
                           "devices": {d.device_id: d.version for d in devices}}
    if account is None:
        out["announced"] = False
        print(json.dumps(out))
        return 0
    messages = [(downlink.topic(args.tenant, d.device_id, "rules"),
                 downlink.dumps(downlink.announcement(key, args.tenant, d.device_id, d.version)),
                 True) for d in devices]
    try:
        downlink.mqtt_publish(account, messages)
    except downlink.DownlinkError as err:
        out["announced"] = False
        print(json.dumps(out))
        print(f"gated: stored, but not announced: {err}; the gates fetch it at their next "
              "rules poll, or publish again", file=sys.stderr)
        return 1
    out["announced"] = True
    print(json.dumps(out))
    return 0


def cmd_command(args: argparse.Namespace) -> int:
    """Sign, record, audit and publish one command; with --wait, print the device's result."""
    import time

    import psycopg

    from gated.central import downlink
    from gated.sync.signing import load_or_create_key
    from gated.unix_user import name_of

    config = _config(args)
    command_args = downlink.check_command(args.action, args.lane, args.reason, args.ttl)
    if not config.mqtt_enabled:
        raise downlink.DownlinkError("commands go out over MQTT: [mqtt] enabled is false")
    account = downlink.broker_account(args.config, config.mqtt)
    key = load_or_create_key(config.key_file)
    with psycopg.connect(config.database_url, autocommit=True) as conn:
        event = downlink.issue_command(conn, key, args.tenant, args.device, args.action,
                                       command_args, f"unix:{name_of()}", args.ttl)
        command_id = event["id"]
        downlink.mqtt_publish(account, [(downlink.topic(args.tenant, args.device, "commands"),
                                         downlink.dumps(event), False)])
        out: dict[str, Any] = {"command_id": command_id, "tenant_id": args.tenant,
                               "device_id": args.device, "action": args.action,
                               "args": command_args, "expires_at": event["data"]["expires_at"]}
        if args.wait <= 0:
            print(json.dumps(out))
            return 0
        deadline = time.monotonic() + args.wait
        results: list[dict[str, Any]] = []
        while not results and time.monotonic() < deadline:
            time.sleep(0.2)
            results = downlink.results_for(conn, args.tenant, command_id)
    out["result"] = results[0] if results else None
    print(json.dumps(out))
    if not results:
        print(f"gated: no result from {args.device} within {args.wait:g} s (the device's "
              "audit row is the record; it arrives with its events)", file=sys.stderr)
        return 3
    return 0 if results[0]["outcome"] == "success" else 1


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
    from gated.central.snapshots import configured_store

    return configured_store(config)


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


def cmd_erasures(args: argparse.Namespace) -> int:
    """Apply pending `personal_data_erased` rows; one line per erasure applied."""
    from gated.central.erasure import run

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = _config(args)
    snapshots = _snapshot_store(config)
    with _owner(config) as conn:
        applied = run(conn, snapshots, instance=config.instance)
    for a in applied:
        print(json.dumps({"tenant_id": a.tenant_id, "device_id": a.device_id,
                          "erasure": a.event_id, "access_rows": a.access_rows,
                          "audit_rows": a.audit_rows, "pictures_unlisted": a.listings_removed,
                          "objects_deleted": a.objects_removed,
                          "ignored_entries": a.ignored}))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run MQTT and HTTP ingest until SIGTERM or SIGINT."""
    import asyncio
    import dataclasses

    from gated.central import downlink
    from gated.central.ingest_http import HttpIngest, serve
    from gated.central.ingest_mqtt import MqttIngest, MqttSettings
    from gated.central.store import Store
    from gated.central.viewer.serve import load_settings, start_viewer
    from gated.sync.signing import load_or_create_key

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The storing threads alternate Python work with waits for PostgreSQL. A thread whose
    # answer arrived waits for the interpreter lock until the busy thread yields it: after
    # 5 ms by default, while PostgreSQL sits idle. Yielding every 0.1 ms keeps both busy
    # (bench.central: 0.5 ms and 0.05 ms were slower, within the noise of a 2-core machine).
    sys.setswitchinterval(0.0001)
    # Ingest decodes thousands of events a second into dicts and lists that reference
    # counting frees (they hold no cycles). At the default threshold (700 allocations) the
    # cyclic collector ran every few events and, every so often, walked the whole heap:
    # ~20% of the instance's CPU (bench.central). Cycles are rare here; collect them seldom.
    gc.set_threshold(50_000, 50, 100)
    config = _config(args)
    viewer_settings, viewer_config = load_settings(args.config, config.snapshots_path)
    snapshots = _snapshot_store(config)
    viewer_config = dataclasses.replace(viewer_config, snapshot_store=snapshots)
    key = load_or_create_key(config.key_file)
    if config.mqtt_enabled and downlink.downlink_configured(args.config):
        # the viewer's admins may send remote commands, through the operator's broker account
        viewer_config = dataclasses.replace(viewer_config, issue_command=downlink.command_issuer(
            config.database_url, key, downlink.broker_account(args.config, config.mqtt)))
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
