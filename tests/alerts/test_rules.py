"""The alert rule engine (gated.alerts.rules): tables of cases and folding properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gated.alerts.rules import (
    RULE_NAMES,
    AlertDecision,
    AlertEngine,
    Happening,
    RuleSettings,
    happenings_from_row,
    refusals_from_row,
)


def h(rule: str = "deny_listed", subject: str = "XX000X", at: float = 1000.0) -> Happening:
    return Happening(rule, subject, f"{rule} {subject}", "message", at)


def access(reason: str, plate: str = "XX000X", lane: str = "main-in") -> dict[str, Any]:
    return {"stream": "access", "seq": 7, "created_at": 1.0e9, "decision_reason": reason,
            "access_point": lane, "vehicle_plate": plate, "event_id": "e-1", "direction": "in"}


def audit(action: str, **fields: Any) -> dict[str, Any]:
    return {"stream": "audit", "seq": 9, "created_at": 1.0e9, "action": action,
            "status": "success", "metadata": {}, **fields}


def test_rule_names_are_unique_and_include_every_issue_rule() -> None:
    assert len(set(RULE_NAMES)) == len(RULE_NAMES)
    for rule in ("deny_listed", "lockdown_read", "forced_open", "held_open", "journal_check",
                 "refusal_flood", "relay_fault", "camera_fault", "disk_full", "sync_backlog",
                 "clock_unsynced"):
        assert rule in RULE_NAMES


@pytest.mark.parametrize(
    ("row", "rule", "subject"),
    [
        (access("deny_listed"), "deny_listed", "XX000X"),
        (access("lockdown"), "lockdown_read", "main-in"),
        (audit("gate_alarm", resource_id="main-in", status="failure",
               metadata={"alarm": "forced_open"}), "forced_open", "main-in"),
        (audit("gate_alarm", resource_id="main-in", status="failure",
               metadata={"alarm": "held_open"}), "held_open", "main-in"),
        (audit("journal_check", status="failure", error_message="row 5 hash mismatch"),
         "journal_check", "journal"),
        (audit("journal_recovered", status="failure", error_message="not a database"),
         "journal_check", "journal"),
    ],
)
def test_rows_that_alert(row: dict[str, Any], rule: str, subject: str) -> None:
    [found] = happenings_from_row(row)
    assert (found.rule, found.subject, found.source_seq) == (rule, subject, row["seq"])


@pytest.mark.parametrize(
    "row",
    [
        access("resident"), access("unknown_plate"), access("guard_override"),
        audit("gate_alarm", resource_id="main-in", metadata={"alarm": "no_movement"}),
        audit("gate_alarm_cleared", resource_id="main-in", metadata={"alarm": "forced_open"}),
        audit("journal_check", status="success"),
        audit("alert_raised", metadata={"rule": "deny_listed"}),
        audit("daemon_start"),
    ],
)
def test_rows_that_do_not_alert(row: dict[str, Any]) -> None:
    assert happenings_from_row(row) == []


def test_refusals_need_an_address_and_a_failure() -> None:
    found = refusals_from_row(audit("camera_push_refused", status="failure",
                                    ip_address="10.0.0.9", metadata={"count": 12}))
    assert found is not None and found[0].subject == "10.0.0.9" and found[1] == 12
    assert refusals_from_row(audit("login", ip_address="10.0.0.9")) is None
    assert refusals_from_row(audit("relay_fault", status="failure")) is None
    # A hostile count in metadata is not trusted as a number of any size or type.
    odd = refusals_from_row(audit("login_failed", status="failure", ip_address="::1",
                                  metadata={"count": "many"}))
    assert odd is not None and odd[1] == 1


def test_first_happening_alerts_at_once_and_the_rest_fold_into_one_summary() -> None:
    engine = AlertEngine({"deny_listed": RuleSettings(interval_s=60)})
    first = engine.offer(h(at=1), now=0)
    assert first is not None and first.count == 1 and first.folded == 0
    for i in range(49):
        assert engine.offer(h(at=2 + i), now=1 + i * 0.1) is None
    assert engine.due(now=59) == []
    [summary] = engine.due(now=60)
    assert summary.count == 49 and summary.folded == 48
    assert summary.first_at == 2 and summary.last_at == 50
    assert "49 times" in summary.title
    assert engine.due(now=200) == [] and engine.pending() == 0


def test_subjects_and_rules_fold_separately() -> None:
    engine = AlertEngine()
    assert engine.offer(h(subject="A"), 0) is not None
    assert engine.offer(h(subject="B"), 0) is not None
    assert engine.offer(h(rule="lockdown_read", subject="A"), 0) is not None
    assert engine.offer(h(subject="A"), 1) is None


def test_a_disabled_rule_never_alerts() -> None:
    engine = AlertEngine({"deny_listed": RuleSettings(enabled=False)})
    assert engine.offer(h(), 0) is None and engine.due(10_000) == []


def test_a_lasting_condition_alerts_once_per_episode_after_fault_after_s() -> None:
    engine = AlertEngine({"relay_fault": RuleSettings(fault_after_s=30, interval_s=1)})

    def sample(active: bool, now: float) -> AlertDecision | None:
        return engine.condition("relay_fault", "main-in-relay", active, now, "t", "m", 5.0)

    assert sample(True, 0) is None
    assert sample(True, 29) is None
    raised = sample(True, 30)
    assert raised is not None and raised.details["lasted_s"] == 30
    assert sample(True, 100) is None  # still the same episode
    assert sample(False, 101) is None
    assert sample(True, 102) is None  # a new episode: its own 30 s first
    assert sample(True, 132) is not None


def test_threshold_conditions_alert_on_the_first_active_sample() -> None:
    engine = AlertEngine()
    assert engine.condition("disk_full", "state", True, 0, "t", "m", 1.0) is not None
    assert engine.condition("disk_full", "state", True, 1, "t", "m", 1.0) is None


def test_refusal_flood_counts_per_address_within_the_window() -> None:
    engine = AlertEngine({"refusal_flood": RuleSettings(flood_count=5, flood_window_s=10)})
    base = h(rule="refusal_flood", subject="10.0.0.9")
    other = h(rule="refusal_flood", subject="10.0.0.10")
    for i in range(4):
        assert engine.refusals(base, 1, now=i) is None
        assert engine.refusals(other, 1, now=i) is None
    flood = engine.refusals(base, 1, now=5)
    assert flood is not None and flood.details["refusals"] == 5
    # Refusals spread wider than the window never add up to a flood.
    spread = AlertEngine({"refusal_flood": RuleSettings(flood_count=5, flood_window_s=10)})
    assert all(spread.refusals(base, 1, now=i * 11) is None for i in range(20))
    # A summary row counting 12 refusals is a flood on its own.
    assert AlertEngine().refusals(base, 25, now=0) is not None


happening_streams = st.lists(
    st.tuples(st.sampled_from(["deny_listed", "lockdown_read"]), st.sampled_from("ABC"),
              st.floats(min_value=0, max_value=5, allow_nan=False)),
    max_size=120)


@given(stream=happening_streams, interval=st.floats(min_value=1, max_value=30))
def test_folding_never_alerts_twice_within_an_interval_and_counts_add_up(
        stream: list[tuple[str, str, float]], interval: float) -> None:
    settings = {name: RuleSettings(interval_s=interval) for name in ("deny_listed",
                                                                     "lockdown_read")}
    engine = AlertEngine(settings)
    now = 0.0
    alerts: list[tuple[float, AlertDecision]] = []
    for rule, subject, step in stream:
        now += step
        for d in engine.due(now):
            alerts.append((now, d))
        decision = engine.offer(h(rule, subject, at=now), now)
        if decision is not None:
            alerts.append((now, decision))
    # Counts: every happening is in exactly one alert or still pending.
    assert sum(d.count for _, d in alerts) + engine.pending() == len(stream)
    # Spacing: per rule and subject, alerts are at least one interval apart.
    last: dict[tuple[str, str], float] = {}
    for at, d in alerts:
        key = (d.rule, d.subject)
        if key in last:
            assert at - last[key] >= interval - 1e-9  # float sums, not the engine
        last[key] = at
    # Draining: once every window has ended, nothing stays pending.
    for d in engine.due(now + interval):
        alerts.append((now + interval, d))
    assert engine.pending() == 0
    assert sum(d.count for _, d in alerts) == len(stream)


def test_the_config_names_every_rule_in_order() -> None:
    from gated.config import AlertRulesConfig

    assert tuple(AlertRulesConfig.__struct_fields__) == RULE_NAMES


def test_refusal_counts_stay_bounded_under_a_scan_from_many_addresses() -> None:
    from gated.alerts import rules

    engine = AlertEngine()
    for i in range(rules.MAX_ADDRESSES + 500):
        engine.refusals(h(rule="refusal_flood", subject=f"10.{i // 65536}.{i // 256 % 256}."
                          f"{i % 256}"), 1, now=i * 0.001)
    assert len(engine._refusals) == rules.MAX_ADDRESSES
