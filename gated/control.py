"""The control plane: every action a person or a system takes on the gate, checked and audited.

Buttons, `gated ctl` (the Unix socket), and next the status page, signed remote
commands and Home Assistant are thin front ends: each turns what it received
into an `Actor` and one call here. This module decides whether that actor may
do that now, carries it out through the lane, and writes the one audit row that
says who asked, why, and what came of it — success, refused (with why) or
failed — so no front end can forget to audit or audit differently (invariant 8).

What may do what (`PERMITTED`) is a table, not code paths: a new front end gets
a new actor type and one line per action it may take.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from gated.audit import Auditor
from gated.errors import GatedError
from gated.model import AuthorizationMethod, Mode

__all__ = [
    "PERMITTED",
    "Action",
    "Actor",
    "ActorType",
    "ControlLane",
    "ControlPlane",
    "Outcome",
    "Result",
]

RELAY_TEST_MAX_MS = 5000  # a relay test is a click, not a way to hold a gate open
REASON_MAX = 500


class ActorType(StrEnum):
    """Who is acting, as audit_logs.actor_type records it."""

    GUARD_BUTTON = "guard_button"  # a button wired to the device
    LOCAL_USER = "local_user"  # a Unix user on the device (`gated ctl`, SO_PEERCRED)
    GUARD = "guard"  # a logged-in guard on the status page
    REMOTE = "remote"  # a command signed by the central service
    HOME_ASSISTANT = "home_assistant"
    SYSTEM = "system"


class Action(StrEnum):
    """Everything the control plane can do; the audit row's action is derived from it."""

    OPEN = "open"
    HOLD = "hold"
    RELEASE = "release"
    LOCKDOWN_ON = "lockdown_on"
    LOCKDOWN_OFF = "lockdown_off"
    RELAY_TEST = "relay_test"
    RELOAD_RULES = "reload_rules"


_ALL = frozenset(ActorType)
PERMITTED: Mapping[Action, frozenset[ActorType]] = {
    Action.OPEN: _ALL - {ActorType.SYSTEM},
    Action.HOLD: _ALL - {ActorType.SYSTEM},
    Action.RELEASE: _ALL,
    Action.LOCKDOWN_ON: _ALL,
    Action.LOCKDOWN_OFF: _ALL - {ActorType.SYSTEM},
    # Pulsing a relay to hear it click is the installer's check at the device.
    Action.RELAY_TEST: frozenset({ActorType.LOCAL_USER}),
    Action.RELOAD_RULES: frozenset({ActorType.LOCAL_USER, ActorType.REMOTE, ActorType.SYSTEM}),
}
# Lockdown stops automated entry; a person at or behind the gate may still open it.
OPEN_IN_LOCKDOWN = frozenset(
    {ActorType.GUARD_BUTTON, ActorType.LOCAL_USER, ActorType.GUARD, ActorType.REMOTE}
)

_METHOD = {
    ActorType.GUARD_BUTTON: AuthorizationMethod.GUARD_BUTTON,
    ActorType.GUARD: AuthorizationMethod.MANUAL_GUARD,
    ActorType.LOCAL_USER: AuthorizationMethod.MANUAL_GUARD,
    ActorType.REMOTE: AuthorizationMethod.REMOTE,
    ActorType.HOME_ASSISTANT: AuthorizationMethod.REMOTE,
}

_AUDIT = {  # action → (audit action, resource type)
    Action.OPEN: ("gate_open", "gate"),
    Action.HOLD: ("gate_hold", "gate"),
    Action.RELEASE: ("gate_release", "gate"),
    Action.LOCKDOWN_ON: ("lockdown_on", "gate"),
    Action.LOCKDOWN_OFF: ("lockdown_off", "gate"),
    Action.RELAY_TEST: ("relay_test", "relay"),
    Action.RELOAD_RULES: ("rules_reload", "rules"),
}


class Outcome(StrEnum):
    """What came of an action."""

    SUCCESS = "success"
    REFUSED = "refused"  # not permitted, unknown lane, bad argument, wrong mode
    FAILED = "failed"  # permitted and tried, but the hardware or the store failed


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks: recorded on the audit row of everything they do."""

    type: ActorType
    id: str | None = None
    role: str | None = None
    address: str | None = None  # IP address, or "uid=…" for a local user
    request_id: str | None = None
    user_agent: str | None = None

    def audit_fields(self) -> dict[str, str | None]:
        """The audit row's actor columns (Auditor.record keywords)."""
        return {"actor_type": self.type.value, "actor_id": self.id, "actor_role": self.role,
                "ip_address": self.address, "user_agent": self.user_agent,
                "request_id": self.request_id}


@dataclass(frozen=True, slots=True)
class Result:
    """The answer every front end shows: outcome, one line of why, and details."""

    outcome: Outcome
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the action was carried out."""
        return self.outcome == Outcome.SUCCESS


class ControlLane(Protocol):
    """What the control plane needs of a lane (gated.lane.Lane provides it)."""

    id: str

    @property
    def mode(self) -> Mode:
        """The lane's current mode."""
        ...

    async def open_manually(
        self, *, method: AuthorizationMethod, actor_id: str | None = None, note: str = ""
    ) -> Any:
        """Open once; returns the journaled access event (its metadata names a relay error)."""
        ...

    async def set_mode(self, mode: Mode) -> str | None:
        """Switch mode, driving the relay for hold-open; returns a relay error or None."""
        ...

    async def relay_test(self, ms: int) -> None:
        """Pulse the relay for `ms` without an access event; raises HardwareError."""
        ...

    def status(self) -> dict[str, Any]:
        """Mode, gate state, alarms, relay health and counters of this lane."""
        ...


Lanes = Callable[[], Mapping[str, ControlLane]]
ReloadRules = Callable[[], Awaitable[int]]


class _Refused(Exception):
    """Raised inside an action to refuse it with a one-line reason."""


class ControlPlane:
    """The one place every gate action is checked, carried out and audited."""

    def __init__(
        self,
        lanes: Lanes,
        auditor: Auditor,
        *,
        reload_rules: ReloadRules | None = None,
        status_extra: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
    ) -> None:
        self._lanes = lanes
        self._auditor = auditor
        self._reload_rules = reload_rules
        self._status_extra = status_extra

    # --- the actions ---------------------------------------------------------------

    async def open(self, actor: Actor, lane: str, reason: str | None = None) -> Result:
        """Open a lane's gate once."""
        return await self._do(Action.OPEN, actor, reason, lane=lane)

    async def hold(self, actor: Actor, lane: str, reason: str | None = None) -> Result:
        """Hold a lane's gate open until released."""
        return await self._do(Action.HOLD, actor, reason, lane=lane)

    async def release(self, actor: Actor, lane: str, reason: str | None = None) -> Result:
        """End a hold-open (the gate closes once no vehicle stands in it)."""
        return await self._do(Action.RELEASE, actor, reason, lane=lane)

    async def lockdown(
        self, actor: Actor, on: bool, lane: str | None = None, reason: str | None = None
    ) -> Result:
        """Lockdown on or off for one lane, or every lane when `lane` is None."""
        action = Action.LOCKDOWN_ON if on else Action.LOCKDOWN_OFF
        return await self._do(action, actor, reason, lane=lane)

    async def relay_test(
        self, actor: Actor, lane: str, ms: int = 300, reason: str | None = None
    ) -> Result:
        """Pulse a lane's relay for `ms` (the installer's "does the board click" check)."""
        return await self._do(Action.RELAY_TEST, actor, reason, lane=lane, ms=ms)

    async def reload_rules(self, actor: Actor, reason: str | None = None) -> Result:
        """Re-read the rule store now instead of at the next poll."""
        return await self._do(Action.RELOAD_RULES, actor, reason)

    async def refuse(self, action: Action, actor: Actor, why: str,
                     lane: str | None = None) -> Result:
        """Refuse and audit an action a front end will not carry out (e.g. disabled there)."""
        return await self._do(action, actor, None, refusal=why, lane=lane)

    async def perform(self, action: str, actor: Actor, args: Mapping[str, Any]) -> Result:
        """Dispatch by name with arguments as data (socket, web and remote front ends)."""
        try:
            act = Action(action)
        except ValueError:
            return await self._refuse_unknown(action, actor)
        args = dict(args)
        reason = args.pop("reason", None)
        extra = sorted(set(args) - {"lane", "ms"})
        refusal = f"unexpected argument(s): {', '.join(extra)}" if extra else None
        return await self._do(act, actor, reason, refusal=refusal,
                              lane=args.get("lane"), **({"ms": args["ms"]} if "ms" in args else {}))

    async def status(self) -> dict[str, Any]:
        """Read-only status of every lane and the daemon (not audited: it changes nothing)."""
        lanes = {lane_id: lane.status() for lane_id, lane in self._lanes().items()}
        extra = dict(await self._status_extra()) if self._status_extra else {}
        return {"at": time.time(), "lanes": lanes, **extra}

    # --- one path for all of them ----------------------------------------------------

    async def _do(self, action: Action, actor: Actor, reason: Any, *,
                  refusal: str | None = None, **args: Any) -> Result:
        audit_action, resource_type = _AUDIT[action]
        lane_id = args.get("lane")
        started = time.monotonic()
        try:
            if refusal is not None:
                raise _Refused(refusal)
            reason = _clean_reason(reason)
            if actor.type not in PERMITTED[action]:
                raise _Refused(f"{action.value} is not permitted for {actor.type.value}")
            result = await self._carry_out(action, actor, reason, args)
        except _Refused as why:
            result = Result(Outcome.REFUSED, str(why))
        except GatedError as err:
            result = Result(Outcome.FAILED, str(err))
        await self._audit(audit_action, resource_type, lane_id, actor, reason, result, args,
                          (time.monotonic() - started) * 1000)
        return result

    async def _carry_out(
        self, action: Action, actor: Actor, reason: str | None, args: Mapping[str, Any]
    ) -> Result:
        if action == Action.RELOAD_RULES:
            if self._reload_rules is None:
                raise _Refused("rule reload is not available")
            version = await self._reload_rules()
            return Result(Outcome.SUCCESS, f"rule set version {version} loaded",
                          {"rules_version": version})
        if action in (Action.LOCKDOWN_ON, Action.LOCKDOWN_OFF) and args.get("lane") is None:
            targets = list(self._lanes().values())
            if not targets:
                raise _Refused("no lanes are running")
        else:
            targets = [self._lane(args.get("lane"))]
        if action == Action.OPEN:
            return await self._open(targets[0], actor, reason)
        if action == Action.RELAY_TEST:
            return await self._relay_test(targets[0], args.get("ms", 300))
        wanted, needs = {
            Action.HOLD: (Mode.HOLD_OPEN, None),
            Action.RELEASE: (Mode.NORMAL, Mode.HOLD_OPEN),
            Action.LOCKDOWN_ON: (Mode.LOCKDOWN, None),
            Action.LOCKDOWN_OFF: (Mode.NORMAL, Mode.LOCKDOWN),
        }[action]
        if action == Action.HOLD and any(t.mode == Mode.LOCKDOWN for t in targets):
            raise _Refused(f"lane {targets[0].id} is in lockdown; end the lockdown first")
        changed, errors = [], []
        for lane in targets:
            if lane.mode == wanted or (needs is not None and lane.mode != needs):
                continue  # idempotent: already there, or not in the mode this action ends
            error = await lane.set_mode(wanted)
            changed.append(lane.id)
            if error:
                errors.append(f"{lane.id}: {error}")
        data = {"lanes": [t.id for t in targets], "changed": changed, "mode": wanted.value}
        if errors:
            return Result(Outcome.FAILED, "relay: " + "; ".join(errors), data)
        what = ", ".join(changed) if changed else "nothing to change"
        return Result(Outcome.SUCCESS, f"{wanted.value}: {what}", data)

    async def _open(self, lane: ControlLane, actor: Actor, reason: str | None) -> Result:
        if lane.mode == Mode.LOCKDOWN and actor.type not in OPEN_IN_LOCKDOWN:
            raise _Refused(f"lane {lane.id} is in lockdown")
        event = await lane.open_manually(
            method=_METHOD.get(actor.type, AuthorizationMethod.MANUAL_GUARD),
            actor_id=actor.id,
            note=reason or "",
        )
        data = {"lane": lane.id, "access_event_id": event.event_id}
        relay_error = (event.metadata or {}).get("relay_error")
        if relay_error:
            return Result(Outcome.FAILED, f"relay did not open: {relay_error}", data)
        return Result(Outcome.SUCCESS, f"{lane.id} opened", data)

    async def _relay_test(self, lane: ControlLane, ms: Any) -> Result:
        if isinstance(ms, bool) or not isinstance(ms, int) or not 1 <= ms <= RELAY_TEST_MAX_MS:
            raise _Refused(f"ms must be a whole number from 1 to {RELAY_TEST_MAX_MS}")
        if lane.mode != Mode.NORMAL:
            raise _Refused(f"lane {lane.id} is in {lane.mode.value}; test the relay in normal mode")
        await lane.relay_test(ms)
        return Result(Outcome.SUCCESS, f"{lane.id} relay pulsed for {ms} ms",
                      {"lane": lane.id, "ms": ms})

    def _lane(self, lane_id: Any) -> ControlLane:
        lanes = self._lanes()
        if not isinstance(lane_id, str) or lane_id not in lanes:
            known = ", ".join(sorted(lanes)) or "none"
            raise _Refused(f"unknown lane {lane_id!r} (lanes: {known})")
        return lanes[lane_id]

    async def _refuse_unknown(self, action: str, actor: Actor) -> Result:
        result = Result(Outcome.REFUSED, f"unknown action {str(action)[:40]!r}")
        await self._audit("control_refused", "control", None, actor, None, result, {}, 0.0)
        return result

    async def _audit(
        self, action: str, resource_type: str, lane_id: str | None, actor: Actor,
        reason: Any, result: Result, args: Mapping[str, Any], duration_ms: float,
    ) -> None:
        metadata: dict[str, Any] = {"outcome": result.outcome.value, **dict(result.data)}
        if isinstance(reason, str) and reason:
            metadata["reason"] = reason[:REASON_MAX]
        if "ms" in args:
            metadata["ms"] = args["ms"] if isinstance(args["ms"], int) else str(args["ms"])[:20]
        await self._auditor.record(
            action,
            resource_type,
            resource_id=lane_id if isinstance(lane_id, str) else None,
            **actor.audit_fields(),
            status="success" if result.ok else "failure",
            error_message=None if result.ok else f"{result.outcome.value}: {result.message}",
            metadata=metadata,
            duration_ms=duration_ms,
        )


def _clean_reason(reason: Any) -> str | None:
    """A reason as the audit row keeps it: one line, bounded; refuses anything else."""
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise _Refused("reason must be text")
    text = " ".join(reason.split())
    if len(text) > REASON_MAX:
        raise _Refused(f"reason is longer than {REASON_MAX} characters")
    return text or None
