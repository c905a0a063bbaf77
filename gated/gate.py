"""The gate state machine: pure values in, values out (pass `now`, monotonic seconds).

The daemon feeds it requests (open, hold, release), sensor changes (position
switch, vehicle presence) and ticks; it answers with the new `Gate` value, the
relay order the daemon must carry out, and the alarms raised or cleared.

States: UNKNOWN → CLOSED → OPENING → OPEN → CLOSING → CLOSED.

* With a position switch (`closed` input) the switch is the truth: CLOSED while
  it is active; after it leaves closed the gate is OPENING for `open_time_s`,
  then OPEN while the relay is energised, then CLOSING (waiting for the switch).
  An impulse-driven controller that auto-closes by itself therefore shows
  CLOSING from the end of the travel time until its switch reports closed.
* Without a switch the state is assumed: OPENING for `open_time_s` after an
  open order, OPEN while the relay stays energised, CLOSING for `open_time_s`
  after that, then CLOSED. It starts UNKNOWN until the first order.

Relay rule: the machine never lets the relay drop (release order, or a pulse
running out) while a vehicle is present. When presence appears while the relay
is energised it orders HOLD; a release asked for while a vehicle is present is
deferred and ordered when presence clears. Presence alone never energises the
relay: a car waiting at a closed gate does not open it.

Alarms (raised once per episode, cleared when the episode ends):
  forced_open  the switch left closed with no open order in effect
  held_open    not closed for longer than `held_open_alarm_s` (an explicit
               hold-open by a guard or mode does not count; a stuck presence
               sensor does)
  no_movement  an open order was given while closed and the switch did not
               leave closed within `open_time_s`
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

__all__ = [
    "Alarm",
    "Gate",
    "GateEvent",
    "GateSetup",
    "GateState",
    "HoldRequested",
    "OpenRequested",
    "Order",
    "PositionChanged",
    "PresenceChanged",
    "ReleaseRequested",
    "Tick",
    "Transition",
    "initial",
    "next_deadline",
    "step",
]


class GateState(StrEnum):
    """Where the gate is (measured with a position switch, assumed without)."""

    UNKNOWN = "unknown"
    CLOSED = "closed"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"


class Alarm(StrEnum):
    """Conditions a guard or the central service must hear about."""

    FORCED_OPEN = "forced_open"
    HELD_OPEN = "held_open"
    NO_MOVEMENT = "no_movement"


@dataclass(frozen=True, slots=True)
class GateSetup:
    """What the lane has wired and how its gate moves (built from GateSensorsConfig)."""

    open_time_s: float = 8.0
    held_open_alarm_s: float = 120.0
    position_switch: bool = False


# --- events ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenRequested:
    """Open for one vehicle: pulse the relay for `ms` milliseconds."""

    ms: int


@dataclass(frozen=True, slots=True)
class HoldRequested:
    """Hold the gate open (hold-open mode, guard) until a release."""


@dataclass(frozen=True, slots=True)
class ReleaseRequested:
    """End a hold (or lockdown): release the relay once no vehicle is present."""


@dataclass(frozen=True, slots=True)
class PositionChanged:
    """The position switch changed (closed=True: the gate is fully closed)."""

    closed: bool


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """The vehicle presence input (loop detector, beam) changed."""

    present: bool


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; call at next_deadline() (or periodically)."""


GateEvent = (
    OpenRequested | HoldRequested | ReleaseRequested | PositionChanged | PresenceChanged | Tick
)


# --- outputs -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Order:
    """What the daemon must do to the relay now: "pulse" (for ms), "hold" or "release"."""

    action: str
    ms: int = 0


@dataclass(frozen=True, slots=True)
class Gate:
    """The whole state of one gate; a value, replaced on every step."""

    setup: GateSetup
    state: GateState = GateState.UNKNOWN
    now: float = 0.0  # time of the last step; earlier `now` values are clamped to it
    switch_closed: bool | None = None  # None: no switch, or no reading yet
    present: bool = False
    hold_explicit: bool = False  # a hold order from a guard / hold-open mode
    hold_presence: bool = False  # a hold order the machine gave because a vehicle is present
    pulse_until: float | None = None  # the relay drops by itself at this time
    released_at: float | None = None  # when the relay last went from energised to released
    last_open_at: float | None = None  # time of the last open/hold order
    open_since: float | None = None  # start of the current not-closed episode
    movement_deadline: float | None = None  # the switch must leave closed by then
    alarms: frozenset[Alarm] = field(default_factory=frozenset)

    def energised(self, now: float) -> bool:
        """Whether the relay is energised at `now` according to the orders given."""
        if self.hold_explicit or self.hold_presence:
            return True
        return self.pulse_until is not None and now < self.pulse_until

    @property
    def release_deferred(self) -> bool:
        """True while a release waits for a vehicle to clear."""
        return self.hold_presence and not self.hold_explicit


@dataclass(frozen=True, slots=True)
class Transition:
    """The result of one step: the new gate, a relay order, alarm changes."""

    gate: Gate
    previous: GateState
    order: Order | None = None
    raised: tuple[Alarm, ...] = ()
    cleared: tuple[Alarm, ...] = ()
    deferred: bool = False  # a release was asked for but waits for presence to clear

    @property
    def state(self) -> GateState:
        """The state after this step."""
        return self.gate.state

    @property
    def changed(self) -> bool:
        """Whether the state changed in this step (log/publish only then)."""
        return self.gate.state != self.previous


# --- the machine -------------------------------------------------------------


def initial(setup: GateSetup, now: float, *, closed: bool | None = None) -> Gate:
    """A new gate at start-up; pass the switch's first reading as `closed` when known."""
    gate = Gate(setup=setup, now=now)
    if setup.position_switch and closed is not None:
        # found open at start: its travel is over, it waits to close (held_open counts from now)
        since = None if closed else now - setup.open_time_s
        gate = replace(gate, switch_closed=closed, open_since=since)
    return replace(gate, state=_derive_state(gate, now))


def step(gate: Gate, event: GateEvent, now: float) -> Transition:
    """Apply one event at monotonic time `now`; returns the new gate and what to do."""
    now = max(now, gate.now)  # a clock read out of order must not move time backwards
    previous = gate.state
    raised: list[Alarm] = []
    cleared: list[Alarm] = []
    g = _advance(gate, now, raised)
    order: Order | None = None
    deferred = False

    match event:
        case OpenRequested(ms=ms):
            g = _note_open_order(g, now)
            if g.present:
                # a vehicle is already on the loop: keep energised until it clears
                g = replace(g, hold_presence=True, pulse_until=None)
                order = Order("hold")
            else:
                until = now + max(ms, 0) / 1000.0
                if g.pulse_until is None or until > g.pulse_until:
                    g = replace(g, pulse_until=until)
                order = Order("pulse", ms)
        case HoldRequested():
            g = _note_open_order(g, now)
            g = replace(g, hold_explicit=True, pulse_until=None)
            order = Order("hold")
        case ReleaseRequested():
            if g.present and g.energised(now):
                g = replace(g, hold_explicit=False, hold_presence=True, pulse_until=None)
                deferred = True
            else:
                g = _released(g, now)
                order = Order("release")
        case PresenceChanged(present=True):
            g = replace(g, present=True)
            if g.energised(now) and not g.hold_explicit and not g.hold_presence:
                g = replace(g, hold_presence=True, pulse_until=None)
                order = Order("hold")
        case PresenceChanged(present=False):
            g = replace(g, present=False)
            if g.hold_presence and not g.hold_explicit:
                g = _released(g, now)
                order = Order("release")
            elif g.hold_presence:
                g = replace(g, hold_presence=False)
        case PositionChanged(closed=closed):
            g = _position(g, closed, now, raised, cleared)
        case Tick():
            pass

    g = _check_held_open(g, now, raised)
    g = replace(g, state=_derive_state(g, now), now=now)
    if g.state == GateState.CLOSED and Alarm.HELD_OPEN in g.alarms:
        g = replace(g, alarms=g.alarms - {Alarm.HELD_OPEN})
        cleared.append(Alarm.HELD_OPEN)
    return Transition(g, previous, order, tuple(raised), tuple(cleared), deferred)


def next_deadline(gate: Gate) -> float | None:
    """The next time a Tick would change something, or None when nothing is pending."""
    s = gate.setup
    candidates: list[float] = []
    if gate.pulse_until is not None and not (gate.hold_explicit or gate.hold_presence):
        candidates.append(gate.pulse_until)
    if gate.movement_deadline is not None:
        candidates.append(gate.movement_deadline)
    if gate.open_since is not None:
        candidates.append(gate.open_since + s.open_time_s)
        if Alarm.HELD_OPEN not in gate.alarms and not gate.hold_explicit:
            candidates.append(gate.open_since + s.held_open_alarm_s)
    if (
        not s.position_switch
        and gate.open_since is not None
        and gate.released_at is not None
        and not gate.energised(gate.now)  # a held relay keeps it open: no closing to wait for
    ):
        candidates.append(_assumed_closed_at(gate))
    future = [t for t in candidates if t > gate.now]
    return min(future) if future else None


# --- helpers -----------------------------------------------------------------


def _advance(g: Gate, now: float, raised: list[Alarm]) -> Gate:
    """Let time pass: pulses run out, movement deadlines expire."""
    holding = g.hold_explicit or g.hold_presence
    if g.pulse_until is not None and not holding and now >= g.pulse_until:
        g = replace(g, released_at=g.pulse_until, pulse_until=None)
    if g.movement_deadline is not None and now >= g.movement_deadline:
        g = replace(g, movement_deadline=None)
        if g.switch_closed and Alarm.NO_MOVEMENT not in g.alarms:
            g = replace(g, alarms=g.alarms | {Alarm.NO_MOVEMENT})
            raised.append(Alarm.NO_MOVEMENT)
    if (
        not g.setup.position_switch
        and g.open_since is not None
        and g.released_at is not None
        and not g.energised(now)
        and now >= _assumed_closed_at(g)
    ):
        g = replace(g, open_since=None)  # assumed closed: the episode ends
    return g


def _note_open_order(g: Gate, now: float) -> Gate:
    """Record an open/hold order: start a movement check or an assumed episode."""
    g = replace(g, last_open_at=now)
    if g.setup.position_switch:
        if g.switch_closed and g.movement_deadline is None:
            g = replace(g, movement_deadline=now + g.setup.open_time_s)
    elif g.open_since is None or _derive_state(g, now) == GateState.CLOSING:
        # without a switch an order starts (or restarts) an assumed opening
        g = replace(g, open_since=now, released_at=None)
    return g


def _released(g: Gate, now: float) -> Gate:
    """The relay was ordered to drop now."""
    was = g.energised(now)
    g = replace(g, hold_presence=False, hold_explicit=False, pulse_until=None)
    return replace(g, released_at=now) if was else g


def _position(g: Gate, closed: bool, now: float, raised: list[Alarm], cleared: list[Alarm]) -> Gate:
    """A position switch reading: the truth about closed / not closed."""
    if not g.setup.position_switch:
        g = replace(g, setup=replace(g.setup, position_switch=True))
    was = g.switch_closed
    g = replace(g, switch_closed=closed)
    if closed:
        gone = g.alarms & {Alarm.FORCED_OPEN, Alarm.HELD_OPEN}
        cleared.extend(sorted(gone))
        return replace(g, open_since=None, alarms=g.alarms - gone)
    if was is False:
        return g
    # first reading: the gate was already open, its travel is over
    since = now if was is True else now - g.setup.open_time_s
    g = replace(g, open_since=since, movement_deadline=None)
    if Alarm.NO_MOVEMENT in g.alarms:
        g = replace(g, alarms=g.alarms - {Alarm.NO_MOVEMENT})
        cleared.append(Alarm.NO_MOVEMENT)
    if was is True and not _order_in_effect(g, now) and Alarm.FORCED_OPEN not in g.alarms:
        g = replace(g, alarms=g.alarms | {Alarm.FORCED_OPEN})
        raised.append(Alarm.FORCED_OPEN)
    return g


def _order_in_effect(g: Gate, now: float) -> bool:
    """Whether an open order explains the gate leaving closed now."""
    if g.energised(now):
        return True
    return g.last_open_at is not None and now - g.last_open_at <= g.setup.open_time_s


def _check_held_open(g: Gate, now: float, raised: list[Alarm]) -> Gate:
    """Raise held_open once when the gate stays open too long without an explicit hold."""
    if g.open_since is None or g.hold_explicit or Alarm.HELD_OPEN in g.alarms:
        return g
    if now >= g.open_since + g.setup.held_open_alarm_s:  # the sum next_deadline() sleeps to
        raised.append(Alarm.HELD_OPEN)
        return replace(g, alarms=g.alarms | {Alarm.HELD_OPEN})
    return g


def _assumed_closed_at(g: Gate) -> float:
    """Without a switch: when a released gate is assumed closed again."""
    assert g.open_since is not None and g.released_at is not None
    travel_done = g.open_since + g.setup.open_time_s
    return max(g.released_at, travel_done) + g.setup.open_time_s


def _derive_state(g: Gate, now: float) -> GateState:
    """The state implied by the switch (or the orders, without one) at `now`.

    Travel ends at `open_since + open_time_s`, computed as next_deadline() does:
    `now - open_since < open_time_s` can round the other way, and the daemon would
    then sleep past the end of an opening.
    """
    t = g.setup.open_time_s
    if g.setup.position_switch:
        if g.switch_closed is None:
            return GateState.UNKNOWN
        if g.switch_closed or g.open_since is None:
            return GateState.CLOSED if g.switch_closed else GateState.OPEN
        if now < g.open_since + t:
            return GateState.OPENING
        return GateState.OPEN if g.energised(now) else GateState.CLOSING
    if g.open_since is None:
        return GateState.UNKNOWN if g.last_open_at is None else GateState.CLOSED
    if now < g.open_since + t:
        return GateState.OPENING
    if g.energised(now) or g.released_at is None:
        return GateState.OPEN
    return GateState.CLOSING if now < _assumed_closed_at(g) else GateState.CLOSED
