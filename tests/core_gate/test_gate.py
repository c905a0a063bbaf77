"""The pure gate state machine: tables of cases and properties over random event sequences."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gated.gate import (
    Alarm,
    Gate,
    GateEvent,
    GateSetup,
    GateState,
    HoldRequested,
    OpenRequested,
    Order,
    PositionChanged,
    PresenceChanged,
    ReleaseRequested,
    Tick,
    Transition,
    initial,
    next_deadline,
    step,
)

SWITCH = GateSetup(open_time_s=8.0, held_open_alarm_s=60.0, position_switch=True)
BARE = GateSetup(open_time_s=8.0, held_open_alarm_s=60.0)


def run(gate: Gate, *events: tuple[float, GateEvent]) -> tuple[Gate, list[Transition]]:
    """Apply (now, event) pairs in order."""
    out = []
    for now, event in events:
        t = step(gate, event, now)
        out.append(t)
        gate = t.gate
    return gate, out


# --- with a position switch ---------------------------------------------------


def test_starts_unknown_until_the_switch_reports() -> None:
    g = initial(SWITCH, 0.0)
    assert g.state == GateState.UNKNOWN
    assert step(g, PositionChanged(True), 0.1).state == GateState.CLOSED
    assert initial(SWITCH, 0.0, closed=True).state == GateState.CLOSED
    assert initial(SWITCH, 0.0, closed=False).state == GateState.CLOSING


def test_normal_cycle_with_switch() -> None:
    g = initial(SWITCH, 0.0, closed=True)
    g, ts = run(
        g,
        (1.0, OpenRequested(800)),
        (1.5, PositionChanged(False)),
        (5.0, Tick()),
        (9.6, Tick()),
        (20.0, PositionChanged(True)),
    )
    assert ts[0].order == Order("pulse", 800)
    assert [t.state for t in ts] == [
        GateState.CLOSED, GateState.OPENING, GateState.OPENING, GateState.CLOSING,
        GateState.CLOSED,
    ]
    assert all(not t.raised for t in ts)


def test_forced_open_raised_once_and_cleared_on_close() -> None:
    g = initial(SWITCH, 0.0, closed=True)
    g, ts = run(
        g,
        (100.0, PositionChanged(False)),
        (101.0, Tick()),
        (102.0, PositionChanged(False)),
        (103.0, PositionChanged(True)),
    )
    assert ts[0].raised == (Alarm.FORCED_OPEN,)
    assert [t.raised for t in ts[1:]] == [(), (), ()]
    assert ts[3].cleared == (Alarm.FORCED_OPEN,)
    assert g.alarms == frozenset()


def test_opening_after_an_order_is_not_forced() -> None:
    g = initial(SWITCH, 0.0, closed=True)
    # the pulse has ended but the controller starts moving a little later
    g, ts = run(g, (10.0, OpenRequested(500)), (12.0, PositionChanged(False)))
    assert ts[1].raised == ()
    # long after the order, an opening is forced again
    g, ts = run(g, (30.0, PositionChanged(True)), (50.0, PositionChanged(False)))
    assert ts[1].raised == (Alarm.FORCED_OPEN,)


def test_no_movement_when_switch_never_leaves_closed() -> None:
    g = initial(SWITCH, 0.0, closed=True)
    g, ts = run(g, (1.0, OpenRequested(800)), (5.0, Tick()))
    assert next_deadline(g) == 9.0
    g, ts = run(g, (9.0, Tick()), (10.0, Tick()), (11.0, OpenRequested(800)), (11.5, Tick()))
    assert ts[0].raised == (Alarm.NO_MOVEMENT,)
    assert all(t.raised == () for t in ts[1:])  # once per episode, not every tick/order
    t = step(g, PositionChanged(False), 12.0)
    assert t.cleared == (Alarm.NO_MOVEMENT,)
    assert t.raised == ()  # an order was in effect recently: not forced


def test_held_open_once_and_cleared() -> None:
    g = initial(SWITCH, 0.0, closed=True)
    g, ts = run(
        g,
        (0.0, OpenRequested(800)),
        (1.0, PositionChanged(False)),
        (60.9, Tick()),
        (61.0, Tick()),
        (62.0, Tick()),
        (200.0, Tick()),
        (201.0, PositionChanged(True)),
    )
    raised = [a for t in ts for a in t.raised]
    assert raised == [Alarm.HELD_OPEN]
    assert ts[3].raised == (Alarm.HELD_OPEN,)
    assert ts[-1].cleared == (Alarm.HELD_OPEN,)


def test_explicit_hold_is_not_held_open() -> None:
    g = initial(SWITCH, 0.0, closed=True)
    g, ts = run(g, (0.0, HoldRequested()), (1.0, PositionChanged(False)), (500.0, Tick()))
    assert ts[0].order == Order("hold")
    assert ts[-1].state == GateState.OPEN
    assert all(not t.raised for t in ts)
    # once the hold ends the clock counts from when the gate left closed
    t = step(g, ReleaseRequested(), 501.0)
    assert t.order == Order("release")
    assert t.raised == (Alarm.HELD_OPEN,)
    assert t.state == GateState.CLOSING


# --- presence -----------------------------------------------------------------


def test_presence_during_pulse_turns_it_into_a_hold_then_releases() -> None:
    g = initial(SWITCH, 0.0, closed=True)
    g, ts = run(
        g,
        (0.0, OpenRequested(800)),
        (0.5, PresenceChanged(True)),
        (5.0, Tick()),
        (6.0, PresenceChanged(False)),
    )
    assert [t.order for t in ts] == [Order("pulse", 800), Order("hold"), None, Order("release")]


def test_presence_alone_never_opens() -> None:
    g = initial(SWITCH, 0.0, closed=True)
    g, ts = run(g, (0.0, PresenceChanged(True)), (3.0, Tick()), (4.0, PresenceChanged(False)))
    assert [t.order for t in ts] == [None, None, None]
    assert g.state == GateState.CLOSED


def test_open_while_present_holds() -> None:
    g = initial(SWITCH, 0.0, closed=True)
    g, ts = run(g, (0.0, PresenceChanged(True)), (1.0, OpenRequested(800)),
                (9.0, PresenceChanged(False)))
    assert [t.order for t in ts] == [None, Order("hold"), Order("release")]


def test_release_deferred_while_present() -> None:
    g = initial(SWITCH, 0.0, closed=True)
    g, ts = run(
        g,
        (0.0, HoldRequested()),
        (10.0, PresenceChanged(True)),
        (20.0, ReleaseRequested()),
        (25.0, Tick()),
        (30.0, PresenceChanged(False)),
    )
    assert [t.order for t in ts] == [Order("hold"), None, None, None, Order("release")]
    assert ts[2].deferred and ts[2].gate.release_deferred
    assert not ts[4].gate.release_deferred


def test_explicit_hold_survives_presence_clearing() -> None:
    g = initial(SWITCH, 0.0, closed=True)
    g, ts = run(g, (0.0, HoldRequested()), (1.0, PresenceChanged(True)),
                (2.0, PresenceChanged(False)))
    assert [t.order for t in ts] == [Order("hold"), None, None]
    assert g.energised(3.0)


def test_stuck_presence_raises_held_open() -> None:
    g = initial(SWITCH, 0.0, closed=True)
    g, ts = run(g, (0.0, OpenRequested(800)), (0.1, PositionChanged(False)),
                (0.2, PresenceChanged(True)), (61.0, Tick()))
    assert ts[-1].raised == (Alarm.HELD_OPEN,)
    assert ts[-1].state == GateState.OPEN


# --- without sensors -------------------------------------------------------------


def test_without_sensors_assumes_a_cycle_after_a_pulse() -> None:
    g = initial(BARE, 0.0)
    assert g.state == GateState.UNKNOWN
    g, ts = run(g, (1.0, Tick()), (2.0, OpenRequested(800)), (5.0, Tick()),
                (10.0, Tick()), (17.9, Tick()), (18.0, Tick()))
    assert [t.state for t in ts] == [
        GateState.UNKNOWN, GateState.OPENING, GateState.OPENING, GateState.CLOSING,
        GateState.CLOSING, GateState.CLOSED,
    ]
    assert next_deadline(g) is None
    assert all(not t.raised for t in ts)


def test_without_sensors_hold_keeps_open_then_closes() -> None:
    g = initial(BARE, 0.0)
    g, ts = run(g, (0.0, HoldRequested()), (30.0, Tick()), (40.0, ReleaseRequested()),
                (47.0, Tick()), (48.0, Tick()))
    assert [t.state for t in ts] == [
        GateState.OPENING, GateState.OPEN, GateState.CLOSING, GateState.CLOSING,
        GateState.CLOSED,
    ]


def test_reopen_while_closing_without_sensors() -> None:
    g = initial(BARE, 0.0)
    g, ts = run(g, (0.0, OpenRequested(500)), (9.0, Tick()), (10.0, OpenRequested(500)))
    assert [t.state for t in ts] == [GateState.OPENING, GateState.CLOSING, GateState.OPENING]


def test_clock_going_backwards_is_clamped() -> None:
    g = initial(SWITCH, 0.0, closed=True)
    g, ts = run(g, (10.0, OpenRequested(800)), (5.0, Tick()))
    assert ts[1].gate.now == 10.0


def test_position_event_without_configured_switch_is_used() -> None:
    g = initial(BARE, 0.0)
    t = step(g, PositionChanged(True), 1.0)
    assert t.state == GateState.CLOSED


# --- properties ----------------------------------------------------------------


events = st.one_of(
    st.builds(OpenRequested, st.integers(min_value=1, max_value=5000)),
    st.just(HoldRequested()),
    st.just(ReleaseRequested()),
    st.builds(PositionChanged, st.booleans()),
    st.builds(PresenceChanged, st.booleans()),
    st.just(Tick()),
)
timed = st.lists(st.tuples(st.floats(min_value=0.0, max_value=30.0), events), max_size=40)
setups = st.builds(
    GateSetup,
    open_time_s=st.floats(min_value=0.5, max_value=20.0),
    held_open_alarm_s=st.floats(min_value=1.0, max_value=60.0),
    position_switch=st.booleans(),
)


@dataclass
class RelayModel:
    """What a real relay does with the machine's orders (pulse runs out by itself)."""

    held: bool = False
    until: float | None = None

    def energised_at(self, t: float) -> bool:
        return self.held or (self.until is not None and t < self.until)

    def apply(self, order: Order | None, now: float) -> None:
        if order is None:
            return
        if order.action == "hold":
            self.held, self.until = True, None
        elif order.action == "release":
            self.held, self.until = False, None
        elif order.action == "pulse" and not self.held:
            end = now + order.ms / 1000.0
            self.until = end if self.until is None or self.until < now else max(self.until, end)


@settings(max_examples=300, deadline=None)
@given(setup=setups, seq=timed)
def test_relay_never_drops_while_a_vehicle_is_present(setup: GateSetup, seq: list) -> None:
    g = initial(setup, 0.0)
    relay = RelayModel()
    now = 0.0
    for gap, event in seq:
        nxt = now + gap
        if g.present and relay.until is not None and not relay.held:
            # a pulse running out between events while present would close on the vehicle
            assert not (now <= relay.until <= nxt), "pulse ran out while present"
        was = relay.energised_at(nxt)
        t = step(g, event, nxt)
        relay.apply(t.order, nxt)
        if t.gate.present and was and g.present:
            assert relay.energised_at(nxt), "released while a vehicle was present"
        # the machine's idea of the relay matches what the orders did
        assert t.gate.energised(nxt) == relay.energised_at(nxt)
        g, now = t.gate, nxt


@settings(max_examples=300, deadline=None)
@given(setup=setups, seq=timed)
def test_alarms_raise_once_per_episode(setup: GateSetup, seq: list) -> None:
    g = initial(setup, 0.0)
    active: set[Alarm] = set()
    now = 0.0
    for gap, event in seq:
        now += gap
        t = step(g, event, now)
        for alarm in t.raised:
            assert alarm not in active, f"{alarm} raised twice in one episode"
            active.add(alarm)
        for alarm in t.cleared:
            assert alarm in active
            active.discard(alarm)
        assert active == set(t.gate.alarms)
        # a tick at the same moment raises nothing new
        again = step(t.gate, Tick(), now)
        assert again.raised == () and again.order is None
        deadline = next_deadline(t.gate)
        assert deadline is None or deadline > now
        g = t.gate


@settings(max_examples=200, deadline=None)
@given(setup=setups, seq=timed)
def test_closed_switch_means_closed_state(setup: GateSetup, seq: list) -> None:
    g = initial(setup, 0.0)
    now = 0.0
    for gap, event in seq:
        now += gap
        g = step(g, event, now).gate
        if g.switch_closed is True:
            assert g.state == GateState.CLOSED
        if g.switch_closed is False:
            assert g.state in (GateState.OPENING, GateState.OPEN, GateState.CLOSING)


def _quiet(gate: Gate, at: float) -> bool:
    """True when a tick at `at` changes nothing but the time: no order, alarm or state change."""
    t = step(gate, Tick(), at)
    return t.order is None and not t.raised and not t.cleared and t.gate == replace(gate, now=at)


@settings(max_examples=400, deadline=None)
@given(setup=setups, seq=timed)
def test_next_deadline_is_the_next_change(setup: GateSetup, seq: list) -> None:
    # The daemon sleeps until next_deadline(): a later deadline would let a pulse end,
    # an opening finish or an alarm fall due unseen; an earlier one is a tick for nothing.
    g = initial(setup, 0.0)
    now = 0.0
    for gap, event in seq:
        now += gap
        g = step(g, event, now).gate
        deadline = next_deadline(g)
        if deadline is None:
            assert _quiet(g, now + 1e6), "something changed with no deadline pending"
            continue
        assert deadline > now
        for before in (now + (deadline - now) / 2, deadline - 1e-6):
            if now < before < deadline:
                assert _quiet(g, before), "something changed before the deadline"
        assert not _quiet(g, deadline + 1e-6), "nothing changed at the deadline"


def test_next_deadline_table() -> None:
    # pulse end, end of travel, held-open alarm, assumed closed: each is the next change
    g = initial(BARE, 0.0)
    g = step(g, OpenRequested(2000), 0.0).gate
    assert next_deadline(g) == 2.0  # the pulse ends before the travel does
    g = step(g, Tick(), 2.0).gate
    assert next_deadline(g) == 8.0  # end of the assumed travel
    g = step(g, Tick(), 8.0).gate
    assert g.state == GateState.CLOSING and next_deadline(g) == 16.0  # assumed closed
    held = step(initial(SWITCH, 0.0, closed=True), HoldRequested(), 0.0).gate
    held = step(held, PositionChanged(False), 1.0).gate
    assert next_deadline(held) == 9.0  # travel; no held_open alarm during an explicit hold
    assert next_deadline(step(held, Tick(), 9.0).gate) is None
    opened = step(initial(SWITCH, 0.0, closed=True), OpenRequested(500), 0.0).gate
    opened = step(opened, PositionChanged(False), 1.0).gate
    assert next_deadline(step(opened, Tick(), 9.0).gate) == 61.0  # the held_open alarm


# --- edges found by mutation testing ---------------------------------------------


def test_a_pulse_ends_at_its_last_instant() -> None:
    g = step(initial(BARE, 0.0), OpenRequested(1000), 0.0).gate
    assert g.energised(0.999) and not g.energised(1.0)


@pytest.mark.parametrize("ms", [0, -5])
def test_a_pulse_of_no_length_never_energises(ms: int) -> None:
    t = step(initial(BARE, 5.0), OpenRequested(ms), 5.0)
    assert t.order == Order("pulse", ms)
    assert not t.gate.energised(5.0)


def test_initial_keeps_its_time_and_reading() -> None:
    g = initial(SWITCH, 100.0, closed=True)
    assert (g.now, g.state, g.open_since, next_deadline(g)) == (100.0, GateState.CLOSED, None, None)
    # a closed gate at start raises nothing, however long it stays closed
    assert step(g, Tick(), 10_000.0).raised == ()
    assert step(g, Tick(), 50.0).gate.now == 100.0  # time never runs backwards
    found_open = initial(SWITCH, 100.0, closed=False)
    assert (found_open.state, found_open.open_since) == (GateState.CLOSING, 92.0)
    # a reading from a switch that is not configured is not used
    assert initial(BARE, 100.0, closed=False).state == GateState.UNKNOWN


def test_transitions_say_what_changed() -> None:
    g = initial(BARE, 0.0)
    t = step(g, OpenRequested(500), 0.0)
    assert (t.previous, t.state, t.changed, t.deferred) == (
        GateState.UNKNOWN, GateState.OPENING, True, False,
    )  # fmt: skip
    again = step(t.gate, Tick(), 1.0)
    assert (again.previous, again.changed, again.deferred) == (GateState.OPENING, False, False)


@settings(max_examples=200, deadline=None)
@given(setup=setups, seq=timed)
def test_flags_are_plain_booleans(setup: GateSetup, seq: list) -> None:
    g = initial(setup, 0.0)
    now = 0.0
    for gap, event in seq:
        now += gap
        t = step(g, event, now)
        g = t.gate
        for flag in (g.present, g.hold_explicit, g.hold_presence, t.deferred):
            assert type(flag) is bool
        if not g.present:
            assert not g.hold_presence  # a hold because of a vehicle ends with it


def test_presence_ending_a_hold_lets_the_assumed_gate_close() -> None:
    g = initial(BARE, 0.0)
    g, ts = run(g, (0.0, OpenRequested(2000)), (1.0, PresenceChanged(True)),
                (20.0, PresenceChanged(False)))  # fmt: skip
    assert ts[-1].order == Order("release")
    assert g.state == GateState.CLOSING and next_deadline(g) == 28.0
    assert step(g, Tick(), 28.0).state == GateState.CLOSED


def test_a_release_after_the_pulse_ended_does_not_move_the_assumed_close() -> None:
    g = initial(BARE, 0.0)
    g, _ = run(g, (0.0, OpenRequested(1000)), (10.0, ReleaseRequested()))
    assert g.state == GateState.CLOSING and next_deadline(g) == 16.0


def test_first_reading_open_means_the_travel_is_over() -> None:
    g = initial(BARE, 0.0)
    t = step(g, PositionChanged(False), 30.0)
    assert t.state == GateState.CLOSING and t.gate.open_since == 22.0


def test_a_gate_that_opened_and_closed_quickly_raises_no_movement_alarm() -> None:
    g = initial(SWITCH, 0.0, closed=True)
    g, ts = run(g, (0.0, OpenRequested(500)), (1.0, PositionChanged(False)),
                (3.0, PositionChanged(True)), (9.0, Tick()), (30.0, Tick()))  # fmt: skip
    assert all(Alarm.NO_MOVEMENT not in t.raised for t in ts)
    assert g.alarms == frozenset()


@pytest.mark.parametrize(("leaves_at", "forced"), [(8.0, False), (8.5, True)])
def test_an_order_explains_the_gate_leaving_closed_for_its_travel_time(
    leaves_at: float, forced: bool
) -> None:
    g = initial(SWITCH, 0.0, closed=True)
    g, ts = run(g, (0.0, OpenRequested(100)), (leaves_at, PositionChanged(False)))
    assert (Alarm.FORCED_OPEN in ts[-1].raised) is forced


def test_held_open_without_a_switch_clears_when_the_gate_is_assumed_closed() -> None:
    g = initial(BARE, 0.0)
    g, ts = run(g, (0.0, OpenRequested(1000)), (0.5, PresenceChanged(True)),
                (70.0, Tick()), (80.0, PresenceChanged(False)), (88.0, Tick()))  # fmt: skip
    assert Alarm.HELD_OPEN in ts[2].raised
    assert ts[-1].state == GateState.CLOSED and ts[-1].cleared == (Alarm.HELD_OPEN,)
    assert g.alarms == frozenset()


def test_a_tick_at_the_end_of_a_pulse_sees_it_ended() -> None:
    g = step(initial(BARE, 0.0), OpenRequested(10_000), 0.0).gate
    t = step(g, Tick(), 10.0)
    assert (t.state, t.gate.released_at, t.gate.pulse_until) == (GateState.CLOSING, 10.0, None)


def test_a_vehicle_leaving_during_an_explicit_hold_leaves_only_the_hold() -> None:
    g = initial(BARE, 0.0)
    g, _ = run(g, (0.0, OpenRequested(5000)), (1.0, PresenceChanged(True)),
               (2.0, HoldRequested()), (3.0, PresenceChanged(False)))  # fmt: skip
    assert (g.hold_explicit, g.hold_presence, g.release_deferred) == (True, False, False)
    assert g.energised(100.0)


def test_an_order_while_open_starts_no_movement_check() -> None:
    # the gate is already open when the order comes, then closes within its travel time
    g = initial(SWITCH, 0.0, closed=False)
    g, ts = run(g, (1.0, OpenRequested(500)), (3.0, PositionChanged(True)), (20.0, Tick()))
    assert all(not t.raised for t in ts) and g.alarms == frozenset()
    assert next_deadline(g) is None


def test_after_the_vehicle_left_an_order_pulses_again() -> None:
    g = initial(BARE, 0.0)
    g, ts = run(g, (0.0, PresenceChanged(True)), (1.0, PresenceChanged(False)),
                (2.0, OpenRequested(800)))  # fmt: skip
    assert (g.present, ts[-1].order) == (False, Order("pulse", 800))


def test_a_hold_given_while_opening_after_a_short_pulse_keeps_the_gate_open() -> None:
    g = initial(BARE, 0.0)
    g, ts = run(g, (0.0, OpenRequested(1000)), (5.0, HoldRequested()), (9.0, Tick()))
    assert ts[-1].state == GateState.OPEN and g.energised(9.0)
