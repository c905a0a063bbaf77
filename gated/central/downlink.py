"""The service's downlink (docs/protocol.md section 11): signed rule bundles and remote commands.

- `gated central rules publish` validates a rule file with the edge's own parser
  (gated.rules.files, through a throw-away rule store), stores it as the scope's next version,
  and for every device it reaches stores the device's next bundle version: a full bundle and,
  from the second version on, a delta on the version before (rows upserted by id, ids
  deleted), each signed with the service key over its canonical JSON. Then the retained,
  signed announcement goes out on each device's `P/rules`.
- `GET /v1/devices/{device_id}/rules?since=V` (ingest_http) answers from `bundle_answer`.
- `gated central command` signs a command (id, nonce, expiry), records and audits it in one
  transaction, then publishes it on `P/commands` at QoS 1; results from `P/commands/result`
  are kept by `record_result` (the MQTT ingest), checked against the device key.
- A gate that syncs over HTTP only long-polls `GET /v1/devices/{device_id}/commands`
  (ingest_http), answered from `pending_commands`: every command recorded for it, however it
  was issued, that has not expired and has no answer from it yet. `issue_command` NOTIFYs
  `COMMANDS_CHANNEL` on commit so a held poll returns at once. Its results come back by
  `POST …/commands/result` and are kept by the same `record_result`.

A device's version is the service's count of rule sets that reached it: a site-wide publish
and a device's own publish both add a version, and the newest one is what the device runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import secrets
import tempfile
import time
import tomllib
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg.types.json import Jsonb

from gated.central import witness
from gated.errors import ConfigError, GatedError, RulesError
from gated.sync.commands import COMMAND_ACTIONS
from gated.sync.signing import SignatureError, kid_of, sign, verify

log = logging.getLogger("gated.central.downlink")

KINDS = ("schedules", "groups", "residents", "vehicles", "tags", "visitor_passes", "deny_list")
LANE_ACTIONS = frozenset({"open", "hold", "release"})  # protocol 11.3: these need args.lane
MAX_TTL_S = 300  # the edge's default command_max_age_s: a longer command would be refused
REASON_MAX = 500
COMMANDS_CHANNEL = "gated_commands"  # NOTIFY channel: a command was issued (payload: command_key)
PENDING_MAX = 16  # commands one GET …/commands answers; the rest come with the next poll


class DownlinkError(GatedError):
    """An operator's downlink request cannot be done; the message says why."""


# --- rule sets -----------------------------------------------------------------------------


def load_rule_file(path: str | Path, tz: str = "UTC") -> dict[str, Any]:
    """A rule file (JSON, one CSV or a folder of CSVs) as the normalised gated-rules document.

    The file goes through the edge's own import into a throw-away rule store and is exported
    back, so what is bundled is exactly what a device's import takes; RulesError lists every
    problem the import found.
    """
    from gated.rules.files import export_rules, import_rules
    from gated.rules.store import RuleStore

    source = Path(path)
    if not source.exists():
        raise RulesError(f"{source}: no such file or folder")
    out = io.StringIO()
    with (tempfile.TemporaryDirectory(prefix="gated-central-rules-") as tmp,
          RuleStore(Path(tmp) / "rules.sqlite3") as store):
        import_rules(store, source, actor="service", tz=tz)
        export_rules(store, out, "json", tz=tz)
    document: dict[str, Any] = json.loads(out.getvalue())
    return document


def delta(old: Mapping[str, Any], new: Mapping[str, Any]
          ) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(rows to upsert, ids to delete) by kind that turn rule document `old` into `new`."""
    upserts: dict[str, Any] = {"format": "gated-rules", "format_version": 1}
    deletes: dict[str, list[str]] = {}
    for kind in KINDS:
        before = {row["id"]: row for row in old.get(kind, [])}
        after = {row["id"]: row for row in new.get(kind, [])}
        changed = [row for key, row in after.items() if before.get(key) != row]
        gone = sorted(set(before) - set(after))
        if changed:
            upserts[kind] = changed
        if gone:
            deletes[kind] = gone
    return upserts, deletes


def _now() -> str:
    return witness.rfc3339(time.time())


def _bundle(key: Ed25519PrivateKey, tenant_id: str, device_id: str, version: int,
            issuer: str, rules: Mapping[str, Any], *, base: int | None = None,
            deletes: Mapping[str, list[str]] | None = None) -> bytes:
    """A signed bundle (protocol 11.2) as the exact bytes that are stored and served."""
    signed = sign({"format": "gated-rules-bundle", "format_version": 1, "tenant_id": tenant_id,
                   "device_id": device_id, "version": version,
                   "mode": "full" if base is None else "delta", "base_version": base,
                   "issued_at": _now(), "issuer": issuer, "rules": dict(rules),
                   "delete": dict(deletes or {})}, key)
    return json.dumps(signed, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def announcement(key: Ed25519PrivateKey, tenant_id: str, device_id: str,
                 version: int) -> dict[str, Any]:
    """The signed, retained announcement of a device's newest version (protocol 11.1)."""
    data = sign({"tenant_id": tenant_id, "device_id": device_id, "version": version,
                 "issued_at": _now()}, key)
    return {"specversion": "1.0", "id": str(uuid.uuid4()),
            "source": f"gated-service://{tenant_id}", "type": "io.gated.rules.announce.v1",
            "time": data["issued_at"], "datacontenttype": "application/json", "data": data}


@dataclass(frozen=True)
class Published:
    """One device's new bundle version after a publish."""

    device_id: str
    version: int
    mode_available: str  # "full" or "full+delta"
    full_sha256: str


def _tenant(conn: psycopg.Connection[Any], tenant_id: str) -> None:
    conn.execute("SELECT set_config('gated.tenant_id', %s, true)", (tenant_id,))


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def publish_rules(conn: psycopg.Connection[Any], key: Ed25519PrivateKey, tenant_id: str,
                  scope: str, scope_id: str, document: Mapping[str, Any],
                  issuer: str) -> tuple[int, list[Published]]:
    """Store a rule set as the scope's next version and each reached device's next bundles.

    One transaction: the rule set, every device's bundles and the audit row commit together
    or not at all. Returns (the rule set's version, the devices' new versions).
    """
    if scope not in ("site", "device"):
        raise DownlinkError(f"scope must be site or device, not {scope!r}")
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    published: list[Published] = []
    with conn.transaction():
        _tenant(conn, tenant_id)
        if conn.execute("SELECT 1 FROM tenants").fetchone() is None:
            raise DownlinkError(f"no tenant {tenant_id!r}")
        column = "site_id" if scope == "site" else "device_id"
        # FOR UPDATE: two publishes reaching one device take their versions one after the other
        devices = [r[0] for r in conn.execute(
            f"SELECT device_id FROM devices WHERE {column} = %s ORDER BY device_id FOR UPDATE",
            (scope_id,)).fetchall()]
        if not devices:
            raise DownlinkError(f"tenant {tenant_id!r} has no {scope} {scope_id!r}"
                                + (" with enrolled devices" if scope == "site" else ""))
        row = conn.execute("SELECT coalesce(max(version), 0) + 1 FROM rule_sets "
                           "WHERE scope = %s AND scope_id = %s", (scope, scope_id)).fetchone()
        set_version = int(row[0]) if row else 1
        conn.execute("INSERT INTO rule_sets (tenant_id, scope, scope_id, version, document,"
                     " sha256, published_by) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                     (tenant_id, scope, scope_id, set_version, text,
                      _sha(text.encode("utf-8")), issuer))
        for device_id in devices:
            last = conn.execute("SELECT version, full_bundle FROM rule_bundles WHERE device_id"
                                " = %s ORDER BY version DESC LIMIT 1", (device_id,)).fetchone()
            version = int(last[0]) + 1 if last else 1
            full = _bundle(key, tenant_id, device_id, version, issuer, document)
            delta_body: bytes | None = None
            if last is not None:
                upserts, deletes = delta(json.loads(last[1])["rules"], document)
                delta_body = _bundle(key, tenant_id, device_id, version, issuer, upserts,
                                     base=version - 1, deletes=deletes)
            conn.execute(
                "INSERT INTO rule_bundles (tenant_id, device_id, version, rule_set_scope,"
                " rule_set_scope_id, rule_set_version, full_bundle, full_sha256, delta_bundle,"
                " delta_sha256) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (tenant_id, device_id, version, scope, scope_id, set_version,
                 full.decode("utf-8"), _sha(full),
                 delta_body.decode("utf-8") if delta_body else None,
                 _sha(delta_body) if delta_body else None))
            published.append(Published(device_id, version,
                                       "full+delta" if delta_body else "full", _sha(full)))
        _audit(conn, tenant_id, "rules_published", "rules", f"{scope}:{scope_id}:{set_version}",
               issuer, None, None,
               {"scope": scope, "scope_id": scope_id, "rule_set_version": set_version,
                "counts": {k: len(document.get(k, [])) for k in KINDS},
                "devices": {p.device_id: p.version for p in published}})
    return set_version, published


@dataclass(frozen=True)
class BundleAnswer:
    """What GET …/rules answers: a status, and for 200 the body and its ETag."""

    status: int
    body: bytes = b""
    etag: str = ""


def bundle_answer(conn: psycopg.Connection[Any], tenant_id: str, device_id: str,
                  since: int, if_none_match: str = "") -> BundleAnswer:
    """The answer to a device's `GET …/rules?since=V` (protocol 11.2).

    404 when nothing was ever published for it; 304 when it has the newest version (or
    already holds the answer's ETag); else 200 with a delta when `since` is exactly the
    version before the newest, and a full bundle otherwise.
    """
    with conn.transaction():
        _tenant(conn, tenant_id)
        row = conn.execute(
            "SELECT version, full_sha256, delta_sha256 FROM rule_bundles WHERE device_id = %s"
            " ORDER BY version DESC LIMIT 1", (device_id,)).fetchone()
        if row is None:
            return BundleAnswer(404)
        version, full_sha, delta_sha = row
        if since >= version:
            # a device ahead of the service (a restored database) is told nothing is newer:
            # it would refuse an older version as a rollback anyway
            return BundleAnswer(304, etag=f'"{full_sha[:32]}"')
        use_delta = delta_sha is not None and since == version - 1
        etag = f'"{(delta_sha if use_delta else full_sha)[:32]}"'
        if if_none_match == etag:
            return BundleAnswer(304, etag=etag)
        # only the one body that is sent is read: a full bundle can be megabytes
        body = conn.execute(
            f"SELECT {'delta_bundle' if use_delta else 'full_bundle'} FROM rule_bundles"
            " WHERE device_id = %s AND version = %s", (device_id, version)).fetchone()
    if body is None:  # cannot happen: the service may not delete a version
        return BundleAnswer(404)
    return BundleAnswer(200, body[0].encode("utf-8"), etag)


# --- commands ------------------------------------------------------------------------------


def check_command(action: str, lane: str | None, reason: str | None,
                  ttl_s: float) -> dict[str, Any]:
    """The args of a command as protocol 11.3 allows them; DownlinkError says what is wrong."""
    if action not in COMMAND_ACTIONS:
        raise DownlinkError(f"unknown action {action!r}: one of "
                            f"{', '.join(sorted(COMMAND_ACTIONS))}")
    if action in LANE_ACTIONS and not lane:
        raise DownlinkError(f"{action} needs --lane")
    if lane is not None and (not lane or len(lane) > 128 or any(c < " " for c in lane)):
        raise DownlinkError("--lane must be 1-128 printable characters")
    if reason is not None and (len(reason) > REASON_MAX or any(c < " " for c in reason)):
        raise DownlinkError(f"--reason must be at most {REASON_MAX} printable characters")
    if not 1 <= ttl_s <= MAX_TTL_S:
        raise DownlinkError(f"--ttl must be 1-{MAX_TTL_S} s (a device refuses a command valid "
                            "for longer than its command_max_age_s)")
    args: dict[str, Any] = {}
    if lane is not None and action not in ("reload_rules", "sync_rules"):
        args["lane"] = lane
    if reason:
        args["reason"] = reason
    return args


def issue_command(conn: psycopg.Connection[Any], key: Ed25519PrivateKey, tenant_id: str,
                  device_id: str, action: str, args: Mapping[str, Any], issuer: str,
                  ttl_s: float, via: str = "cli") -> dict[str, Any]:
    """Sign a command, record it and its audit row in one transaction; the CloudEvent to send."""
    now = time.time()
    command_id = str(uuid.uuid4())
    data = sign({"command_id": command_id, "tenant_id": tenant_id, "device_id": device_id,
                 "action": action, "args": dict(args), "issuer": issuer,
                 "issued_at": witness.rfc3339(now), "expires_at": witness.rfc3339(now + ttl_s),
                 "nonce": secrets.token_urlsafe(16)}, key)
    event = {"specversion": "1.0", "id": command_id, "source": f"gated-service://{tenant_id}",
             "type": "io.gated.command.v1", "time": data["issued_at"],
             "datacontenttype": "application/json", "data": data}
    with conn.transaction():
        _tenant(conn, tenant_id)
        if conn.execute("SELECT 1 FROM devices WHERE device_id = %s",
                        (device_id,)).fetchone() is None:
            raise DownlinkError(f"tenant {tenant_id!r} has no device {device_id!r}")
        conn.execute(
            "INSERT INTO commands (tenant_id, command_id, device_id, action, args, issued_by,"
            " issued_at, expires_at, nonce, kid, envelope) VALUES (%s, %s, %s, %s, %s, %s, %s,"
            " %s, %s, %s, %s)",
            (tenant_id, command_id, device_id, action, Jsonb(dict(args)), issuer,
             data["issued_at"], data["expires_at"], data["nonce"], data["kid"], Jsonb(event)))
        _audit(conn, tenant_id, "remote_command_issued", "command", command_id, issuer,
               device_id, command_id,
               {"action": action, "args": dict(args), "expires_at": data["expires_at"],
                "kid": data["kid"]}, via)
        # Delivered at the commit, to every instance LISTENing: a gate long-polling over HTTP
        # gets the command now, whichever process issued it (the CLI, the viewer).
        conn.execute("SELECT pg_notify(%s, %s)", (COMMANDS_CHANNEL,
                                                  command_key(tenant_id, device_id)))
    return event


def command_key(tenant_id: str, device_id: str) -> str:
    """The NOTIFY payload that names a device: a digest, so a listener learns no tenant's ids."""
    return hashlib.sha256(f"{tenant_id}\x00{device_id}".encode()).hexdigest()[:32]


def pending_commands(conn: psycopg.Connection[Any], tenant_id: str, device_id: str,
                     limit: int = PENDING_MAX) -> list[dict[str, Any]]:
    """The signed commands a device has still to answer, oldest first (protocol 11.8).

    A command is served until it expires or the device's answer is kept (any result from that
    device for that id, a refusal included). Served again after a lost answer or a lost
    result is safe: the device's replay cache refuses a second copy (`replayed`), so a command
    acts at most once, and that refusal is the answer that stops it being served.
    """
    with conn.transaction():
        _tenant(conn, tenant_id)
        rows = conn.execute(
            "SELECT c.envelope FROM commands c WHERE c.device_id = %s AND c.expires_at > now()"
            " AND NOT EXISTS (SELECT 1 FROM command_results r WHERE r.tenant_id = c.tenant_id"
            " AND r.command_id = c.command_id::text AND r.device_id = c.device_id)"
            " ORDER BY c.issued_at, c.command_id LIMIT %s", (device_id, limit)).fetchall()
    return [dict(row[0]) for row in rows]


def record_result(conn: psycopg.Connection[Any], tenant_id: str, device_id: str,
                  event: Mapping[str, Any]) -> bool:
    """Keep a schema-valid command result from the topic's (or path's) device; False when refused.

    The result's data must name the topic's tenant and device, and, when the device has an
    enrolled key, carry that key's signature (protocol 11.5); a result sent again is kept once.
    """
    data = event["data"]
    if data.get("tenant_id") != tenant_id or data.get("device_id") != device_id:
        log.warning("command result on %s/%s names another device; refused", tenant_id,
                    device_id)
        return False
    with conn.transaction():
        _tenant(conn, tenant_id)
        row = conn.execute("SELECT public_key FROM devices WHERE device_id = %s",
                           (device_id,)).fetchone()
        if row is None:
            log.warning("command result from %s/%s: device not enrolled; dropped", tenant_id,
                        device_id)
            return False
        verified = False
        if row[0]:
            try:
                public = witness.public_key(row[0])
                verify(data, {kid_of(public): public})
                verified = True
            except (SignatureError, ValueError) as err:
                log.warning("command result from %s/%s refused: %s", tenant_id, device_id, err)
                return False
        conn.execute(
            "INSERT INTO command_results (tenant_id, command_id, result_id, device_id, action,"
            " outcome, reason, message, data, at, signature_verified) VALUES (%s, %s, %s, %s,"
            " %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (tenant_id, data["command_id"], str(event["id"])[:64], device_id, data.get("action"),
             data["outcome"], data.get("reason"), data["message"], Jsonb(data.get("data") or {}),
             data["at"], verified))
    return True


def results_for(conn: psycopg.Connection[Any], tenant_id: str,
                command_id: str) -> list[dict[str, Any]]:
    """The results a command got so far, oldest first."""
    with conn.transaction():
        _tenant(conn, tenant_id)
        rows = conn.execute(
            "SELECT outcome, reason, message, data, at, signature_verified, received_at FROM"
            " command_results WHERE command_id = %s ORDER BY received_at", (command_id,)
        ).fetchall()
    return [{"outcome": o, "reason": r, "message": m, "data": d,
             "at": a.isoformat(), "signature_verified": v, "received_at": t.isoformat()}
            for o, r, m, d, a, v, t in rows]


def _audit(conn: psycopg.Connection[Any], tenant_id: str, action: str, resource_type: str,
           resource_id: str, actor: str, device_id: str | None, request_id: str | None,
           values: Mapping[str, Any], via: str = "cli") -> None:
    """An audit row of the service's own, in the tenant's audit_logs (who asked for what)."""
    conn.execute(
        "INSERT INTO audit_logs (event_id, tenant_id, action, resource_type, resource_id,"
        " actor_id, actor_type, request_id, new_values, metadata, created_at, device_id, origin)"
        " VALUES (%s, %s, %s, %s, %s, %s, 'user', %s, %s, %s, now(), %s, 'service')",
        (uuid.uuid4(), tenant_id, action, resource_type, resource_id, actor, request_id,
         Jsonb(dict(values)), Jsonb({"via": via}), device_id))


# --- publishing over MQTT ------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerAccount:
    """Where and as whom the operator commands publish (central.toml [mqtt] and [downlink])."""

    host: str
    port: int
    username: str
    password: str
    client_id: str
    tls_ca_file: str


def broker_account(config_path: str | Path, mqtt: Mapping[str, Any]) -> BrokerAccount:
    """The operator commands' broker account: `[downlink]` mqtt_username/mqtt_password.

    Not the running instances' account: the shipped broker config makes the username the
    client id, and a second connection under an instance's id would take its persistent
    session over (and, connecting clean, throw away what the broker queued for it).
    """
    try:
        raw = tomllib.loads(Path(config_path).read_text(encoding="utf-8")).get("downlink", {})
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{config_path}: {err}") from err
    unknown = set(raw) - {"mqtt_username", "mqtt_password", "mqtt_client_id"}
    if unknown:
        raise ConfigError(f"{config_path}: [downlink] unknown keys {sorted(unknown)}")
    service_user = str(mqtt.get("username", ""))
    username = str(raw.get("mqtt_username", ""))
    if service_user and (not username or username == service_user):
        raise ConfigError(f"{config_path}: [downlink] mqtt_username is required and must not "
                          f"be [mqtt] username: the operator commands need a broker account of "
                          f"their own (docs/central.md, Downlink)")
    client_id = str(raw.get("mqtt_client_id") or username
                    or f"{mqtt.get('client_id', 'gated-central')}-downlink")
    return BrokerAccount(str(mqtt.get("host", "127.0.0.1")), int(mqtt.get("port", 1883)),
                         username, str(raw.get("mqtt_password", "")), client_id,
                         str(mqtt.get("tls_ca_file", "")))


def mqtt_publish(account: BrokerAccount, messages: Iterable[tuple[str, bytes, bool]],
                 timeout_s: float = 15.0) -> None:
    """Publish (topic, payload, retain) at QoS 1 and wait until the broker took every one.

    Raises DownlinkError when the broker cannot be reached, refuses the account, refuses a
    publish (MQTT 5 PUBACK reason, e.g. the ACL) or does not answer in time.
    """
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=account.client_id,
                         protocol=MQTTProtocolVersion.MQTTv5)
    if account.username:
        client.username_pw_set(account.username, account.password or None)
    if account.tls_ca_file:
        client.tls_set(ca_certs=account.tls_ca_file)
    where = f"{account.host}:{account.port}"
    connected = threading.Event()
    answer: dict[str, Any] = {}
    acks: dict[int, Any] = {}
    lock = threading.Lock()

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        answer["reason"] = reason
        connected.set()

    def on_publish(_c: Any, _u: Any, mid: int, reason: Any, _p: Any = None) -> None:
        with lock:
            acks[mid] = reason

    client.on_connect = on_connect
    client.on_publish = on_publish
    deadline = time.monotonic() + timeout_s
    try:
        client.connect(account.host, account.port, keepalive=30, clean_start=True)
    except OSError as err:
        raise DownlinkError(f"cannot reach the broker at {where}: {err}") from err
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise DownlinkError(f"the broker at {where} did not answer in {timeout_s:.0f} s")
        if getattr(answer["reason"], "is_failure", False):
            raise DownlinkError(f"the broker at {where} refused the account "
                                f"{account.username or '(anonymous)'}: {answer['reason']}")
        mids = [client.publish(name, payload, qos=1, retain=retain).mid
                for name, payload, retain in messages]
        while True:
            with lock:
                missing = [m for m in mids if m not in acks]
                refused = [acks[m] for m in mids if getattr(acks.get(m), "is_failure", False)]
            if refused:
                raise DownlinkError(f"the broker at {where} refused a publish: {refused[0]} "
                                    "(check the account's ACL)")
            if not missing:
                return
            if time.monotonic() > deadline:
                raise DownlinkError(f"the broker at {where} did not acknowledge in "
                                    f"{timeout_s:.0f} s")
            time.sleep(0.02)
    finally:
        client.disconnect()
        client.loop_stop()


def downlink_configured(config_path: str | Path) -> bool:
    """True when central.toml has a [downlink] section (the operator's broker account)."""
    try:
        return "downlink" in tomllib.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{config_path}: {err}") from err


def command_issuer(database_url: str, key: Ed25519PrivateKey, account: BrokerAccount,
                   ttl_s: float = 60.0) -> Callable[..., Awaitable[str]]:
    """The viewer's way to send a command: sign, record and audit, publish; the command id.

    Each call runs on a worker thread with its own short connection (commands are rare), so
    the viewer's event loop never waits on the database or the broker.
    """

    async def issue(tenant_id: str, device_id: str, action: str, args: Mapping[str, Any],
                    issuer: str) -> str:
        def work() -> str:
            with psycopg.connect(database_url, autocommit=True) as conn:
                event = issue_command(conn, key, tenant_id, device_id, action, args, issuer,
                                      ttl_s, via="viewer")
            mqtt_publish(account, [(topic(tenant_id, device_id, "commands"), dumps(event),
                                    False)])
            return str(event["id"])

        return await asyncio.to_thread(work)

    return issue


def topic(tenant_id: str, device_id: str, name: str) -> str:
    """A device's downlink topic, `gated/v1/{tenant}/{device}/{name}`."""
    return f"gated/v1/{tenant_id}/{device_id}/{name}"


def dumps(message: Any) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


__all__ = ["COMMANDS_CHANNEL", "BundleAnswer", "DownlinkError", "Published", "announcement",
           "bundle_answer", "check_command", "command_key", "delta", "issue_command",
           "load_rule_file", "pending_commands", "publish_rules", "record_result",
           "results_for"]
