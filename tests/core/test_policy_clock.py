"""The clock policy: schedules, pass windows and deny-list expiry while the clock is unknown.

The wall clock is moved through an injected ClockWatch (no root, no real clock change):
a boot in 1970, a jump of months forward and back after a synchronised reading.
"""

from __future__ import annotations

from gated.clock import ClockWatch
from gated.config import PolicyConfig
from gated.model import Reason
from gated.policy import ClockView, MemoryPolicyState
from tests.core.test_policy import HOUR, NOW, at, run

DAY = 86_400.0
SATURDAY_NIGHT = at(2025, 3, 15, 3)  # outside bob's office hours
UNSYNCED_NO_BASE = ClockView(synced=False, offset_s=None, plausible=False)  # booted in 1970
UNCONFIRMED = ClockView(synced=False, offset_s=None, plausible=True)  # RTC, no NTP


def state_with(view: ClockView) -> MemoryPolicyState:
    state = MemoryPolicyState()
    state.set_clock(view)
    return state


class FakeClock:
    """A wall clock, a monotonic clock and the kernel's synchronised flag, all settable."""

    def __init__(self, wall: float, synced: bool) -> None:
        self.wall, self.mono, self.synced = wall, 1000.0, synced

    def tick(self, s: float) -> None:
        self.wall += s
        self.mono += s

    def watch(self) -> ClockWatch:
        return ClockWatch(recheck_s=10, wall=lambda: self.wall, mono=lambda: self.mono,
                          synced=lambda _now: self.synced)


def test_a_scheduled_resident_is_refused_with_clock_unsynced_when_no_time_base_exists() -> None:
    decision = run("KX55PRM", state=state_with(UNSYNCED_NO_BASE))  # bob: office hours
    assert (decision.allowed, decision.reason) == (False, Reason.CLOCK_UNSYNCED)
    assert "clock_unsynced" in decision.flags
    # The same read with a synchronised clock opens: only the clock changed.
    assert run("KX55PRM").allowed


def test_a_resident_without_a_schedule_still_opens_without_a_clock() -> None:
    decision = run("AB12CDE", state=state_with(UNSYNCED_NO_BASE), now=0.0)  # 1970
    assert (decision.allowed, decision.reason) == (True, Reason.RESIDENT)


def test_every_pass_window_is_refused_without_a_clock() -> None:
    for plate in ("VIS123", "GONE22", "LATER1"):
        decision = run(plate, state=state_with(UNSYNCED_NO_BASE))
        assert (decision.allowed, decision.reason) == (False, Reason.CLOCK_UNSYNCED), plate


def test_wall_setting_trusts_even_a_clock_that_cannot_be_right() -> None:
    policy = PolicyConfig(unsynced_clock="wall")
    inside = run("KX55PRM", policy=policy, state=state_with(UNSYNCED_NO_BASE))
    assert inside.allowed
    outside = run("KX55PRM", policy=policy, state=state_with(UNSYNCED_NO_BASE),
                  now=SATURDAY_NIGHT)
    assert outside.reason == Reason.OUTSIDE_SCHEDULE


def test_a_plausible_clock_ntp_has_not_confirmed_is_used_as_it_is() -> None:
    assert run("KX55PRM", state=state_with(UNCONFIRMED)).allowed
    outside = run("KX55PRM", state=state_with(UNCONFIRMED), now=SATURDAY_NIGHT)
    assert outside.reason == Reason.OUTSIDE_SCHEDULE
    assert run("GONE22", state=state_with(UNCONFIRMED)).reason == Reason.PASS_EXPIRED


def test_a_deny_entry_never_lapses_without_a_clock() -> None:
    # d-old was lifted an hour before NOW; a clock that cannot be trusted must not lift it.
    assert run("PAROLE1").reason != Reason.DENY_LISTED
    blocked = run("PAROLE1", state=state_with(UNSYNCED_NO_BASE))
    assert blocked.reason == Reason.DENY_LISTED


def test_a_jump_forward_of_months_keeps_schedules_and_passes_on_the_time_base() -> None:
    clock = FakeClock(NOW, synced=True)
    watch = clock.watch()
    state = MemoryPolicyState()
    watch.listeners.append(lambda *view: state.set_clock(ClockView(*view)))
    assert not watch.unsynced()
    clock.tick(60)
    clock.wall += 120 * DAY  # a bad RTC or a person steps the clock; the kernel drops sync
    clock.synced = False
    assert watch.unsynced()  # found at once (a step against the monotonic clock)
    assert state.clock.offset_s == -120 * DAY
    assert watch.estimated_now() == NOW + 60  # ages (privacy) keep to the time base too
    # On the wall clock the pass expired months ago; on the time base it is valid.
    decision = run("VIS123", state=state, now=clock.wall)
    assert (decision.allowed, decision.reason) == (True, Reason.VISITOR_PASS)
    assert "clock_estimated" in decision.flags
    assert decision.inputs["window_now"] == NOW + 60


def test_a_jump_back_keeps_schedules_on_the_time_base() -> None:
    clock = FakeClock(NOW, synced=True)  # Wednesday 10:00, bob's office hours
    watch = clock.watch()
    state = MemoryPolicyState()
    watch.listeners.append(lambda *view: state.set_clock(ClockView(*view)))
    watch.unsynced()
    clock.wall = SATURDAY_NIGHT - 200 * DAY  # stepped back; outside any office hours
    clock.synced = False
    clock.tick(HOUR)
    assert watch.unsynced()
    decision = run("KX55PRM", state=state, now=clock.wall)
    assert decision.allowed  # Wednesday 11:00 on the time base
    assert decision.inputs["window_now"] == NOW + HOUR


def test_a_boot_in_1970_has_no_time_base_until_the_clock_is_synchronised() -> None:
    clock = FakeClock(0.0, synced=False)
    watch = ClockWatch(recheck_s=10, wall=lambda: clock.wall, mono=lambda: clock.mono)
    views: list[tuple[bool, float | None, bool]] = []
    watch.listeners.append(lambda *view: views.append(view))
    assert watch.unsynced()  # 1970 is never synchronised, whatever the kernel says
    assert views[-1] == (False, None, False)
    assert watch.estimated_now() is None  # no age can be judged: housekeeping waits
    # NTP steps the clock to the real time and says so: decisions use it directly.
    real_time = at(2026, 3, 11, 10)  # a Wednesday morning
    clock.wall, clock.synced = real_time, True
    watch._synced_at = lambda _now: clock.synced
    assert not watch.unsynced()
    assert views[-1] == (True, None, True)
    assert watch.estimated_now() == real_time
    state = state_with(ClockView(*views[-1]))
    assert run("KX55PRM", state=state, now=real_time).allowed


def test_the_watch_rechecks_on_its_interval_without_a_jump() -> None:
    clock = FakeClock(NOW, synced=True)
    watch = clock.watch()
    assert not watch.unsynced()
    clock.synced = False
    clock.tick(5)
    assert not watch.unsynced()  # cached: the hot path does not ask the kernel every read
    clock.tick(6)
    assert watch.unsynced()
    assert watch.offset_s() == 0.0  # no step: the time base and the wall clock agree
