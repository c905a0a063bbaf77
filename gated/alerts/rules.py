"""The alert rule engine: happenings in, alert decisions out. Pure: no IO, no clock.

A *happening* is one thing at the gate a rule cares about (a deny-listed plate read, a
gate forced open, a relay fault that has lasted long enough …). The engine decides which
happenings become alerts: one alert per rule and subject per interval; what arrives
within the interval is *folded* and reported by the next alert for that rule and subject,
so a storm of 50 reads of one deny-listed plate is two notifications (the first at once,
one summary with the other 49 when the interval ends), never 50.

Every alert stands for `count` happenings (itself and `folded = count - 1` more): across
all alerts and what is still pending, the counts add up to the happenings offered.

Times passed as `now` are one monotonic clock of the caller's choosing (windows and
durations); `at` on a happening is the wall clock it happened at, kept for the record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gated.config import ALERT_THRESHOLDS, AlertRulesConfig

__all__ = [
    "CONDITION_RULES",
    "DEFAULTS",
    "RULE_NAMES",
    "AlertDecision",
    "AlertEngine",
    "Happening",
    "RuleSettings",
    "happenings_from_row",
    "refusals_from_row",
]

# Every rule gated knows, in the order the docs list them: the config's [alerts.rules] keys
# (each described there). The Home Assistant event entity lists these as its event types.
RULE_NAMES: tuple[str, ...] = AlertRulesConfig.__struct_fields__

# Rules whose happening is a lasting condition the daemon samples, not a journal row.
CONDITION_RULES = frozenset(
    {"relay_fault", "camera_fault", "disk_full", "sync_backlog", "clock_unsynced"})

MAX_ADDRESSES = 4096  # addresses whose refusals are counted at once

SEVERITY = {
    "deny_listed": "critical", "lockdown_read": "warning", "forced_open": "critical",
    "held_open": "warning", "journal_check": "critical", "refusal_flood": "warning",
    "relay_fault": "critical", "camera_fault": "warning", "disk_full": "warning",
    "sync_backlog": "warning", "clock_unsynced": "warning", "test": "info",
}


@dataclass(frozen=True, slots=True)
class RuleSettings:
    """One rule's settings: on or off, its folding interval and its thresholds."""

    enabled: bool = True
    interval_s: float = 300.0
    fault_after_s: float = 60.0  # relay_fault, camera_fault, clock_unsynced
    disk_percent: float = 90.0  # disk_full
    backlog_hours: float = 6.0  # sync_backlog
    flood_count: int = 20  # refusal_flood: this many refusals …
    flood_window_s: float = 60.0  # … from one address within this window


DEFAULTS: Mapping[str, RuleSettings] = {
    name: RuleSettings(fault_after_s=600.0 if name == "clock_unsynced" else 60.0)
    for name in RULE_NAMES
}

# Which threshold keys each rule reads (the config refuses the others on that rule).
THRESHOLDS: Mapping[str, frozenset[str]] = ALERT_THRESHOLDS


@dataclass(frozen=True, slots=True)
class Happening:
    """One thing a rule alerts on."""

    rule: str
    subject: str  # what it is about: a plate, a lane, an address, a relay …
    title: str
    message: str
    at: float  # wall clock, for the record
    details: Mapping[str, Any] = field(default_factory=dict)
    source_seq: int | None = None  # the journal row it came from, if any
    # Personal data in subject, title or message: placeholder -> (stream, event id, column)
    # of the erasable journal field that holds it. The alert's own row stores "{plate}",
    # never the plate; delivery reads it back from that row (gated.alerts.deliver).
    personal: Mapping[str, tuple[str, str, str, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AlertDecision:
    """An alert to raise: the latest happening it stands for, and how many it stands for."""

    rule: str
    subject: str
    severity: str
    title: str
    message: str
    count: int  # happenings this alert stands for (>= 1)
    first_at: float  # wall clock of the first and last of them
    last_at: float
    details: Mapping[str, Any]
    source_seq: int | None
    personal: Mapping[str, tuple[str, str, str, str]] = field(default_factory=dict)

    @property
    def folded(self) -> int:
        """How many more happenings were folded into this alert besides its own."""
        return self.count - 1


@dataclass(slots=True)
class _Window:
    ends: float  # monotonic: no alert for this rule and subject before then
    pending: int = 0  # happenings folded since the last alert
    first_at: float = 0.0
    latest: Happening | None = None


@dataclass(slots=True)
class _Condition:
    since: float  # monotonic: when it was first seen active
    raised: bool = False  # this episode already made its happening


class AlertEngine:
    """Decides which happenings alert; folds the rest into the next alert."""

    def __init__(self, settings: Mapping[str, RuleSettings] | None = None) -> None:
        self.settings = {**DEFAULTS, **(settings or {})}
        self._windows: dict[tuple[str, str], _Window] = {}
        self._conditions: dict[tuple[str, str], _Condition] = {}
        self._refusals: dict[str, list[tuple[float, int]]] = {}

    def enabled(self, rule: str) -> bool:
        """Whether a rule raises alerts at all."""
        return rule in self.settings and self.settings[rule].enabled

    def offer(self, happening: Happening, now: float) -> AlertDecision | None:
        """An alert for this happening now, or None when it was folded (or its rule is off)."""
        if not self.enabled(happening.rule):
            return None
        key = (happening.rule, happening.subject)
        window = self._windows.get(key)
        interval = self.settings[happening.rule].interval_s
        if window is None or now >= window.ends:
            # Whatever was folded into the ended window travels with this alert.
            pending = window.pending if window is not None else 0
            first_at = window.first_at if window is not None and pending else happening.at
            self._windows[key] = _Window(ends=now + interval)
            return _decision(happening, pending + 1, first_at)
        if window.pending == 0:
            window.first_at = happening.at
        window.pending += 1
        window.latest = happening
        return None

    def due(self, now: float) -> list[AlertDecision]:
        """Summary alerts for windows that ended with happenings folded into them."""
        out = []
        for key, window in list(self._windows.items()):
            if now < window.ends:
                continue
            if window.pending and window.latest is not None:
                interval = self.settings[key[0]].interval_s
                out.append(_decision(window.latest, window.pending, window.first_at))
                self._windows[key] = _Window(ends=now + interval)
            else:
                del self._windows[key]  # quiet: forget it, memory stays bounded
        return out

    def pending(self) -> int:
        """Happenings folded and not yet reported by any alert."""
        return sum(w.pending for w in self._windows.values())

    def condition(self, rule: str, subject: str, active: bool, now: float,
                  title: str, message: str, at: float,
                  details: Mapping[str, Any] | None = None) -> AlertDecision | None:
        """Sample a lasting condition; one happening per episode once it lasted long enough.

        disk_full and sync_backlog carry their threshold in `active` already (the caller
        compares the figures): they alert on the first sample; the others after
        fault_after_s of being active.
        """
        key = (rule, subject)
        if not active:
            self._conditions.pop(key, None)
            return None
        state = self._conditions.get(key)
        if state is None:
            state = self._conditions[key] = _Condition(since=now)
        lasting = rule not in ("disk_full", "sync_backlog")
        after = self.settings[rule].fault_after_s if lasting else 0.0
        if state.raised or now - state.since < after:
            return None
        state.raised = True
        info = dict(details or {})
        if lasting:
            info["lasted_s"] = round(now - state.since, 1)
        return self.offer(Happening(rule, subject, title, message, at, info), now)

    def refusals(self, happening: Happening, count: int, now: float) -> AlertDecision | None:
        """Count refused attempts from one address (the subject); a happening at the threshold.

        The window slides: refusals older than flood_window_s are forgotten. Reaching
        flood_count makes one happening and starts the count again.
        """
        if not self.enabled("refusal_flood"):
            return None
        rule = self.settings["refusal_flood"]
        seen = [(t, n) for t, n in self._refusals.get(happening.subject, [])
                if now - t < rule.flood_window_s]
        if happening.subject not in self._refusals and len(self._refusals) >= MAX_ADDRESSES:
            # A scan from more addresses than this: forget the quietest, memory stays bounded.
            del self._refusals[min(self._refusals, key=lambda a: self._refusals[a][-1][0])]
        seen.append((now, max(1, count)))
        total = sum(n for _, n in seen)
        if total < rule.flood_count:
            self._refusals[happening.subject] = seen[-rule.flood_count:]
            return None
        self._refusals.pop(happening.subject, None)
        details = {**happening.details, "refusals": total,
                   "window_s": rule.flood_window_s}
        message = (f"{total} refused attempts from {happening.subject} within "
                   f"{rule.flood_window_s:g} s")
        return self.offer(replace(happening, message=message, details=details), now)

    def forget_idle(self, now: float) -> None:
        """Drop refusal counts that have aged out (memory stays bounded under scans)."""
        window = self.settings["refusal_flood"].flood_window_s
        for address, seen in list(self._refusals.items()):
            if not seen or now - seen[-1][0] >= window:
                del self._refusals[address]


def _decision(h: Happening, count: int, first_at: float) -> AlertDecision:
    title = h.title if count == 1 else f"{h.title} ({count} times)"
    return AlertDecision(
        rule=h.rule, subject=h.subject, severity=SEVERITY.get(h.rule, "warning"),
        title=title, message=h.message, count=count, first_at=min(first_at, h.at),
        last_at=h.at, details=dict(h.details), source_seq=h.source_seq,
        personal=dict(h.personal))


# --- journal rows → happenings -------------------------------------------------------------


def happenings_from_row(row: Mapping[str, Any]) -> list[Happening]:
    """What a journal row (Journal.after's shape, with "stream") means to the alert rules."""
    seq = row.get("seq")
    at = float(row.get("created_at") or 0.0)
    if row.get("stream") == "access":
        reason = row.get("decision_reason")
        lane = str(row.get("access_point") or "?")
        plate = str(row.get("vehicle_plate") or "unread")
        details = {"lane": lane, "event_id": row.get("event_id"),
                   "direction": row.get("direction")}
        personal = ({"plate": (plate, "access", str(row.get("event_id")), "vehicle_plate")}
                    if row.get("vehicle_plate") else {})
        if reason == "deny_listed":
            return [Happening("deny_listed", plate, f"Deny-listed plate {plate} at {lane}",
                              f"A deny-listed plate, {plate}, was read at {lane}; "
                              "the gate stayed closed.", at, details, seq, personal)]
        if reason == "lockdown":
            return [Happening("lockdown_read", lane, f"Read at {lane} in lockdown",
                              f"Plate {plate} was read at {lane}, which is in lockdown.",
                              at, details, seq, personal)]
        return []
    action = row.get("action")
    meta = row.get("metadata") if isinstance(row.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    if action == "gate_alarm":
        alarm = str(meta.get("alarm") or row.get("error_message") or "")
        lane = str(row.get("resource_id") or "?")
        if alarm == "forced_open":
            return [Happening("forced_open", lane, f"Gate forced open at {lane}",
                              f"The gate at {lane} opened without an order.", at,
                              {"lane": lane}, seq)]
        if alarm == "held_open":
            return [Happening("held_open", lane, f"Gate held open at {lane}",
                              f"The gate at {lane} has stayed open too long.", at,
                              {"lane": lane}, seq)]
        return []
    if action in ("journal_check", "journal_recovered") and row.get("status") == "failure":
        problem = str(row.get("error_message") or "")[:200]
        what = ("was found corrupt and started afresh" if action == "journal_recovered"
                else "failed its chain or trigger check")
        return [Happening("journal_check", "journal", "Journal check failed",
                          f"The journal {what}: {problem}", at, {"problem": problem}, seq)]
    return []


def refusals_from_row(row: Mapping[str, Any]) -> tuple[Happening, int] | None:
    """A refused attempt from an address (an audit row with one), and how many it records.

    Summarised refusals (camera pushes, login failures) carry their count in metadata.
    """
    if row.get("stream") != "audit" or row.get("status") != "failure":
        return None
    address = row.get("ip_address")
    if not address:
        return None
    meta = row.get("metadata") if isinstance(row.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    raw = meta.get("count")
    count = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 else 1
    action = str(row.get("action") or "")
    happening = Happening(
        "refusal_flood", str(address), f"Refusal flood from {address}",
        f"Refused attempts from {address} ({action}).",
        float(row.get("created_at") or 0.0), {"action": action}, row.get("seq"),
        {"address": (str(address), "audit", str(row.get("event_id")), "ip_address")})
    return happening, min(count, 1_000_000)


def enabled_rules(settings: Mapping[str, RuleSettings]) -> Iterable[str]:
    """The rules switched on, in RULE_NAMES order."""
    return [name for name in RULE_NAMES if settings.get(name, DEFAULTS[name]).enabled]
