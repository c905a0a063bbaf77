"""Signed remote commands from the central service: verified, remembered, then the control plane.

A command (docs/protocol.md, "Remote commands") is taken only when all of these hold,
checked in this order so the audit row names the first that failed:

1. it is a JSON CloudEvent of type io.gated.command.v1 whose `data` has the command's
   fields (`malformed`);
2. `data` carries a signature (`unsigned`) by a configured service key (`unknown_key`)
   that verifies (`bad_signature`) — only then is anything in it believed;
3. it names this tenant and device (`wrong_tenant`, `wrong_device`);
4. its times make sense against the device clock: the clock is synchronised
   (`clock_unsynced`), it was not issued in the future (`not_yet_valid`), it has not
   expired (`expired`), and it was not valid for longer than `command_max_age_s`
   (`lifetime_too_long`) — so a captured command is worth minutes, not months;
5. neither its id nor its nonce was seen before, and it is newer than the replay
   window's floor (`replayed`, `stale`); the replay cache is on disk
   (gated.sync.downlink_state) and is written *before* the command is carried out,
   so a crash in between never lets the same command act twice;
6. its action is one a remote command may ask for (`unknown_action`).

An accepted command goes to `ControlPlane.perform` as actor type `remote`, actor id
the command's issuer, request id the command id: the control plane checks it like
any other request (lane, mode, permission) and writes the audit row. A command
refused here never reaches the control plane, so this module audits it itself
(`remote_command_refused`), at most `REFUSALS_AUDITED` rows a minute and then one
summary row, so a flood cannot fill the journal. Every command with an id gets a
result (`io.gated.command.result.v1`), signed with the device key, on
`P/commands/result` (over HTTP only: POSTed by gated.sync.command_poll, which hands
commands to `handle` the same way).

Commands are handled one at a time from a bounded queue: the replay check and the
insert are then never raced by a second copy of the same command.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gated.control import Actor, ActorType, Outcome, Result
from gated.errors import GatedError
from gated.ids import new_event_id
from gated.mqttlink import MqttMessage
from gated.sync.downlink_state import DownlinkState
from gated.sync.envelope import rfc3339
from gated.sync.signing import SignatureError, sign, verify

__all__ = [
    "COMMAND_ACTIONS",
    "CommandOutcome",
    "CommandReceiver",
    "Refusal",
    "parse_time",
]

log = logging.getLogger(__name__)

COMMAND_TYPE = "io.gated.command.v1"
RESULT_TYPE = "io.gated.command.result.v1"
MAX_COMMAND_BYTES = 16 * 1024  # a command is a few hundred bytes; anything near this is hostile
QUEUE_SIZE = 64  # commands waiting to be handled; more arriving at once are dropped (counted)
REFUSALS_AUDITED = 20  # refusal rows per REFUSAL_WINDOW_S before they are summarised
REFUSAL_WINDOW_S = 60.0
ID_MAX = 128
ISSUER_MAX = 200

# What a signed remote command may ask for: the control plane's actions (it still checks
# each against its PERMITTED table) plus sync_rules, which fetches the newest rule bundle
# and then reloads through the control plane.
COMMAND_ACTIONS = frozenset(
    {"open", "hold", "release", "lockdown_on", "lockdown_off", "reload_rules", "sync_rules"}
)
_ARGS = frozenset({"lane", "reason"})

Perform = Callable[[str, Actor, Mapping[str, Any]], Awaitable[Result]]
Audit = Callable[..., Awaitable[Any]]  # Auditor.record(action, resource_type, **fields)
PublishResult = Callable[[dict[str, Any]], Awaitable[None]]
SyncRules = Callable[[], Awaitable[Mapping[str, Any]]]


class Refusal(Exception):
    """A command refused before the control plane: a reason code and one line of detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What came of one received command (tests and the result message read it)."""

    command_id: str | None
    outcome: str  # success | refused | failed
    reason: str | None  # the refusal code when refused here; None when the control plane answered
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)


def parse_time(value: Any, name: str) -> float:
    """An RFC 3339 date-time with an offset (or Z) as epoch seconds; Refusal otherwise."""
    if not isinstance(value, str) or len(value) > 40 or "T" not in value.upper():
        raise Refusal("malformed", f"{name} is not an RFC 3339 date-time")
    try:
        moment = dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError as err:
        raise Refusal("malformed", f"{name} is not an RFC 3339 date-time") from err
    if moment.tzinfo is None:
        raise Refusal("malformed", f"{name} has no UTC offset")
    return moment.timestamp()


def _text(data: Mapping[str, Any], key: str, limit: int) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise Refusal("malformed", f"data.{key} must be text of 1-{limit} characters")
    if any(ch < " " for ch in value):
        raise Refusal("malformed", f"data.{key} has control characters")
    return value


@dataclass(frozen=True, slots=True)
class _Command:
    """The fields of a command as received (believed only after the signature checked)."""

    command_id: str
    tenant_id: str
    device_id: str
    action: str
    args: dict[str, Any]
    issuer: str
    issued_at: float
    expires_at: float
    nonce: str
    kid: str


def _claimed(event: Any) -> tuple[str | None, str | None, Any]:
    """The command id, issuer and data a message claims, for the audit row of a refusal."""
    if not isinstance(event, dict):
        return None, None, None
    data = event.get("data")
    cid = data.get("command_id") if isinstance(data, dict) else None
    cid = cid if isinstance(cid, str) else event.get("id")
    issuer = data.get("issuer") if isinstance(data, dict) else None
    cid = cid[:ID_MAX] if isinstance(cid, str) and cid else None
    issuer = issuer[:ISSUER_MAX] if isinstance(issuer, str) and issuer else None
    return cid, issuer, data


def _shape(event: Any) -> _Command:
    """Check the envelope and data shape (not the signature); Refusal('malformed') otherwise."""
    if not isinstance(event, dict):
        raise Refusal("malformed", "not a JSON object")
    if event.get("specversion") != "1.0" or event.get("type") != COMMAND_TYPE:
        raise Refusal("malformed", f"not a CloudEvents 1.0 {COMMAND_TYPE}")
    data = event.get("data")
    if not isinstance(data, dict):
        raise Refusal("malformed", "data is not an object")
    command_id = _text(data, "command_id", ID_MAX)
    if event.get("id") != command_id:
        raise Refusal("malformed", "the envelope id is not data.command_id")
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise Refusal("malformed", "data.args is not an object")
    action = data.get("action")
    if not isinstance(action, str) or not action or len(action) > 40:
        raise Refusal("malformed", "data.action must be text")
    nonce = _text(data, "nonce", 128)
    if len(nonce) < 16:
        raise Refusal("malformed", "data.nonce must have at least 16 characters")
    return _Command(
        command_id=command_id,
        tenant_id=_text(data, "tenant_id", 64),
        device_id=_text(data, "device_id", 64),
        action=action,
        args=args,
        issuer=_text(data, "issuer", ISSUER_MAX),
        issued_at=parse_time(data.get("issued_at"), "data.issued_at"),
        expires_at=parse_time(data.get("expires_at"), "data.expires_at"),
        nonce=nonce,
        kid=str(data.get("kid") or ""),
    )


class CommandReceiver:
    """Takes signed commands for one device, checks them and hands them to the control plane."""

    def __init__(
        self,
        *,
        tenant_id: str,
        device_id: str,
        source: str,
        service_keys: Mapping[str, Ed25519PublicKey],
        state: DownlinkState,
        perform: Perform,
        audit: Audit,
        publish_result: PublishResult | None = None,
        sync_rules: SyncRules | None = None,
        device_key: Ed25519PrivateKey | None = None,
        max_age_s: float = 300.0,
        clock_skew_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        clock_unsynced: Callable[[], bool] = lambda: False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tenant_id = tenant_id
        self.device_id = device_id
        self.source = source
        self._keys = service_keys
        self._state = state
        self._perform = perform
        self._audit = audit
        self._publish_result = publish_result
        self._sync_rules = sync_rules
        self._device_key = device_key
        self.max_age_s = max_age_s
        self.clock_skew_s = clock_skew_s
        self._clock = clock
        self.clock_unsynced = clock_unsynced
        self.monotonic = monotonic
        self._queue: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue(QUEUE_SIZE)
        self.dropped = 0  # commands dropped because QUEUE_SIZE were already waiting
        self.counts: Counter[str] = Counter()  # outcomes and refusal reasons, for metrics
        self._window_start = -math.inf
        self._window_audited = 0
        self._suppressed: Counter[str] = Counter()

    # --- transports ------------------------------------------------------------------

    def on_mqtt(self, message: MqttMessage) -> None:
        """MqttLink handler for P/commands: queue the payload (never blocks paho or the loop)."""
        try:
            self._queue.put_nowait((message.payload, message.retain))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("remote commands: %d dropped: %d already waiting",
                            self.dropped, QUEUE_SIZE)

    async def run(self) -> None:
        """Handle queued commands one at a time until cancelled."""
        try:
            while True:
                payload, retained = await self._queue.get()
                try:
                    await self.handle(payload, retained=retained)
                except GatedError as err:  # the journal or the state file failed: say so, go on
                    log.error("remote command not handled: %s", err)
        finally:
            with contextlib.suppress(GatedError):
                await self._flush_summary(force=True)

    # --- one command ----------------------------------------------------------------

    async def handle(self, payload: bytes, *, retained: bool = False) -> CommandOutcome:
        """Check one command and carry it out, or refuse and audit it; publish the result."""
        event: Any = None
        try:
            if len(payload) > MAX_COMMAND_BYTES:
                raise Refusal("malformed", f"{len(payload)} bytes is more than a command can be")
            try:
                event = json.loads(payload)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
                raise Refusal("malformed", f"not JSON: {str(err)[:80]}") from err
            command = self._shape_and_sign(event)
            self._check(command)
            reason = await asyncio.to_thread(
                self._state.remember, command.command_id, command.nonce, command.expires_at,
                self._clock(), prune_before=self._clock() - self.clock_skew_s,
            )
            if reason == "replayed":
                raise Refusal("replayed", "this command id or nonce was seen before")
            if reason == "stale":
                raise Refusal("stale", "it expires before the replay window's floor")
        except Refusal as refusal:
            cid, issuer, data = _claimed(event)
            outcome = CommandOutcome(cid, Outcome.REFUSED.value, refusal.reason, str(refusal))
            self.counts[refusal.reason] += 1
            await self._audit_refusal(refusal, cid, issuer, data, retained)
            if cid is not None:
                await self._send_result(outcome, data)
            return outcome
        outcome = await self._carry_out(command)
        self.counts[outcome.outcome] += 1
        await self._send_result(outcome, event.get("data"))
        return outcome

    def _shape_and_sign(self, event: Any) -> _Command:
        command = _shape(event)
        try:
            verify(event["data"], self._keys)
        except SignatureError as err:
            raise Refusal(err.reason, str(err)) from err
        return command

    def _check(self, command: _Command) -> None:
        if command.tenant_id != self.tenant_id:
            raise Refusal("wrong_tenant", f"it is for tenant {command.tenant_id!r}")
        if command.device_id != self.device_id:
            raise Refusal("wrong_device", f"it is for device {command.device_id!r}")
        if self.clock_unsynced():
            raise Refusal("clock_unsynced",
                          "the device clock is not synchronised: expiry cannot be checked")
        now = self._clock()
        if command.expires_at <= command.issued_at:
            raise Refusal("malformed", "it expires before it was issued")
        if command.expires_at - command.issued_at > self.max_age_s:
            raise Refusal("lifetime_too_long",
                          f"valid for {command.expires_at - command.issued_at:.0f} s, "
                          f"more than command_max_age_s ({self.max_age_s:.0f} s)")
        if now < command.issued_at - self.clock_skew_s:
            raise Refusal("not_yet_valid",
                          f"issued {command.issued_at - now:.0f} s in the future")
        if now > command.expires_at + self.clock_skew_s:
            raise Refusal("expired", f"expired {now - command.expires_at:.0f} s ago")
        if command.action not in COMMAND_ACTIONS:
            raise Refusal("unknown_action",
                          f"{command.action[:40]!r} is not a remote command "
                          f"({', '.join(sorted(COMMAND_ACTIONS))})")
        extra = sorted(set(command.args) - _ARGS)
        if extra:
            raise Refusal("malformed", f"unexpected argument(s): {', '.join(extra)[:80]}")

    async def _carry_out(self, command: _Command) -> CommandOutcome:
        actor = Actor(ActorType.REMOTE, id=command.issuer, role=f"kid:{command.kid}",
                      request_id=command.command_id)
        args = dict(command.args)
        action = command.action
        extra: dict[str, Any] = {}
        if action == "sync_rules":
            # Fetch and apply the newest bundle (audited by the rules sync itself), then
            # reload through the control plane, which audits the command as rules_reload.
            action = "reload_rules"
            args.pop("lane", None)
            if self._sync_rules is not None:
                try:
                    extra = {"sync": dict(await self._sync_rules())}
                except GatedError as err:
                    extra = {"sync": {"error": str(err)}}
        result = await self._perform(action, actor, args)
        return CommandOutcome(command.command_id, result.outcome.value, None, result.message,
                              {**dict(result.data), **extra})

    # --- results and audit ------------------------------------------------------------

    async def _send_result(self, outcome: CommandOutcome, data: Any) -> None:
        if self._publish_result is None or outcome.command_id is None:
            return
        action = data.get("action") if isinstance(data, dict) else None
        result: dict[str, Any] = {
            "command_id": outcome.command_id,
            "tenant_id": self.tenant_id,
            "device_id": self.device_id,
            "action": action[:40] if isinstance(action, str) else None,
            "outcome": outcome.outcome,
            "reason": outcome.reason,
            "message": outcome.message[:500],
            "data": _plain(outcome.data),
            "at": rfc3339(self._clock()),
        }
        if self._device_key is not None:
            result = sign(result, self._device_key)
        event = {
            "specversion": "1.0",
            "id": new_event_id(),  # time-ordered, like every id the device sends
            "source": self.source,
            "type": RESULT_TYPE,
            "time": result["at"],
            "datacontenttype": "application/json",
            "subject": outcome.command_id,
            "data": result,
        }
        try:
            await self._publish_result(event)
        except GatedError as err:  # the result is a courtesy; the audit row is the record
            log.warning("remote command %s: result not published: %s", outcome.command_id, err)

    async def _audit_refusal(self, refusal: Refusal, command_id: str | None,
                             issuer: str | None, data: Any, retained: bool) -> None:
        now = self.monotonic()
        if now - self._window_start >= REFUSAL_WINDOW_S:
            await self._flush_summary(force=True)
            self._window_start, self._window_audited = now, 0
        if self._window_audited >= REFUSALS_AUDITED:
            self._suppressed[refusal.reason] += 1
            return
        self._window_audited += 1
        metadata: dict[str, Any] = {"reason": refusal.reason, "retained": retained,
                                    "signature_verified": refusal.reason not in _UNVERIFIED}
        if isinstance(data, dict):
            for key in ("action", "device_id", "tenant_id", "kid", "issued_at", "expires_at"):
                value = data.get(key)
                if isinstance(value, str):
                    metadata[key] = value[:120]
        log.warning("remote command %s refused: %s", command_id or "(no id)", refusal)
        await self._audit(
            "remote_command_refused",
            "command",
            resource_id=command_id,
            actor_type=ActorType.REMOTE.value,
            # Claimed, not proven, unless the signature verified (metadata says which).
            actor_id=issuer,
            request_id=command_id,
            status="failure",
            error_message=f"refused: {refusal}"[:500],
            metadata=metadata,
        )

    async def _flush_summary(self, *, force: bool = False) -> None:
        if not self._suppressed:
            return
        total = sum(self._suppressed.values())
        reasons = dict(self._suppressed)
        self._suppressed.clear()
        log.warning("remote commands: %d more refused in the last minute (%s)", total, reasons)
        await self._audit(
            "remote_command_refused",
            "command",
            actor_type=ActorType.REMOTE.value,
            status="failure",
            error_message=f"refused: {total} more command(s) in {REFUSAL_WINDOW_S:.0f} s",
            metadata={"summary": True, "suppressed": total, "reasons": reasons},
        )


# Refusals decided before the signature was checked: nothing in the command is proven.
_UNVERIFIED = frozenset({"malformed", "unsigned", "unknown_key", "bad_signature"})


def _plain(value: Any) -> Any:
    """A JSON-safe copy of a result's data (the control plane's data is plain already)."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return {}


def mqtt_result_publisher(link: Any, topic: str) -> PublishResult:
    """Publish results as JSON on `topic` (P/commands/result) at QoS 1 through an MqttLink."""

    async def publish(event: dict[str, Any]) -> None:
        await link.publish(topic, json.dumps(event, ensure_ascii=False).encode("utf-8"), qos=1)

    return publish
