"""One access point: read → decide → actuate → journal.

What the relay may wait for, and what it may not (invariants 1 and 2):

* It waits for nothing on disk and nothing on the network. The decision is
  made from the in-memory rule index and policy state in microseconds, and the
  relay is commanded straight after. An SD card's fsync regularly stalls for
  tens to hundreds of milliseconds under wear-levelling; a barrier that waits
  for it in front of a car is the failure users see first.
* The journal row is written immediately after, in the same task: the snapshot
  is fsynced and renamed first (or the row records it as missing), then the row
  commits with synchronous=FULL. Only then is the event acknowledged anywhere
  (status feed, upstream). The window in which a power cut could lose an
  opening is therefore the snapshot write plus one commit (a few ms here);
  a power cut in that window also cut the relay's supply, and the gate
  controller's own log is the only record that could exist either way.
* Policy state (anti-passback, pass uses) is updated before the first await,
  so two reads racing through the event loop never both spend the last use of
  a visitor pass. When the relay then fails, the passage is taken back: nobody
  went through, and the rebuild from the journal after a restart
  (`gated.app.Daemon._seed_state`) skips rows with gate_opened = 0 the same way.
* One direction per read: `gated.ingest` resolves it once (camera direction and
  the source's config); the policy decides with it, the live state records it,
  the row's `direction` and `event_type` (`Decision.event_type`) are taken from
  the decision, and the rebuild reads those columns. A restart never changes an
  outcome.
* Acknowledged means kept: on_read returns a future resolved with the seq of the
  row that records the read (or of the event it was merged into) once that row
  has committed; a camera is answered "taken" only then. The relay never waits
  for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from gated import gate as gm
from gated.audit import Append, Auditor
from gated.clock import ClockWatch
from gated.coalesce import Coalescer, Offer, OfferKind
from gated.config import LaneConfig
from gated.consensus import OFF, Consensus, ConsensusRule, Ended, VerdictKind
from gated.errors import GatedError, HardwareError, JournalError, PayloadError
from gated.hardware.base import FrameSource, InputEvent, Relay
from gated.ids import new_event_id
from gated.ingest import DEFAULT_RULES, Ingested, SourceRules, Verdict, ingest
from gated.metrics import LaneMetrics
from gated.model import (
    AccessEvent,
    AuthorizationMethod,
    CredentialKind,
    Decision,
    Direction,
    EventType,
    Mode,
    PlateRead,
    Reason,
    SiteIdentity,
)
from gated.plates import normalise
from gated.policy import AccessPoint, MemoryPolicyState, decide
from gated.rules.index import RuleIndex
from gated.snapshots import SnapshotStore

log = logging.getLogger(__name__)

EventListener = Callable[[AccessEvent, Decision | None], None]
_MAX_EVENTS = 4096  # vehicles whose event the lane remembers (bounded: oldest go first)
_T = TypeVar("_T")


@dataclass(slots=True)
class _Event:
    """The event a coalesced vehicle last produced: its id, outcome and commit."""

    event_id: str
    allowed: bool
    committed: asyncio.Future[int | None]  # resolved with the row's seq once it commits


class RulesHolder:
    """The current RuleIndex; the app swaps it atomically when a new version is indexed."""

    def __init__(self, index: RuleIndex) -> None:
        self.current = index


@dataclass(frozen=True, slots=True)
class LaneParts:
    """Everything a lane is built from, chosen by the composition root."""

    identity: SiteIdentity
    access_point: AccessPoint
    rules: RulesHolder
    state: MemoryPolicyState
    relay: Relay
    append: Append
    snapshots: SnapshotStore
    auditor: Auditor
    clock: ClockWatch
    camera: FrameSource | None = None


class Lane:
    """Runs one access point."""

    def __init__(self, cfg: LaneConfig, parts: LaneParts) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.parts = parts
        self.metrics = LaneMetrics()
        self.coalescer = Coalescer(cfg.dedup_window_s)
        setup = gm.GateSetup(
            open_time_s=cfg.sensors.open_time_s,
            held_open_alarm_s=cfg.sensors.held_open_alarm_s,
            position_switch=cfg.sensors.closed_pin is not None,
        )
        self.gate = gm.initial(setup, time.monotonic())
        self.listeners: list[EventListener] = []
        self._pending: set[asyncio.Task[None]] = set()
        # the event each coalesced vehicle last produced (outcome and commit)
        self._events: dict[str, _Event] = {}
        # per vehicle, the commit that keeps its latest read that was not a duplicate
        # (set before the read is handled: a repeat arriving meanwhile follows it)
        self._kept: dict[str, asyncio.Future[int | None]] = {}
        self._accepting = True
        self._source_rules: dict[str, SourceRules] = {
            src.name: SourceRules.of(src) for src in cfg.sources
        }
        # Reads that must agree before they are decided (gated.consensus), per source.
        self.consensus = Consensus()
        self._consensus_rules: dict[str, ConsensusRule] = {
            src.name: ConsensusRule.of(src.consensus) for src in cfg.sources
        }
        self._consensus_timer: asyncio.TimerHandle | None = None
        # Told when a read is merged into an earlier event (the demo says so).
        self.merged_listeners: list[Callable[[PlateRead], None]] = []

    # --- plate and tag reads -------------------------------------------------

    @property
    def mode(self) -> Mode:
        """The lane's current mode."""
        return self.parts.state.mode(self.id)

    def on_read(self, read: PlateRead) -> asyncio.Future[int | None]:
        """Take a read from any source (event loop thread); never blocks, never raises.

        The future resolves with the seq of the journal row recording the read (or
        of the event it was merged into) once it has committed; None when the read
        is deliberately not journaled (the source's config says ignore). It is
        cancelled when the lane is stopping or the read could not be handled.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int | None] = loop.create_future()
        if not self._accepting:
            done.cancel()
            return done
        self.metrics.reads += 1
        now = time.time()
        ingested = ingest(
            read,
            self._source_rules.get(read.source, DEFAULT_RULES),
            self.parts.access_point.direction,
            now,
            not self.parts.clock.unsynced(),
        )
        verdict = ingested.verdict
        if verdict is Verdict.IGNORE:
            self.metrics.ignored += 1
            done.set_result(None)
            return done
        read = ingested.read
        rule = self._consensus_rules.get(read.source, OFF)
        if verdict is Verdict.DECIDE and rule.enabled:
            agreed = self.consensus.offer(read, rule, read.received_mono)
            self._arm_consensus_timer()
            if agreed.kind is VerdictKind.HOLD:
                # Answered at once, as not journaled by itself: a camera that awaits each
                # answer before sending its next read must be able to reach agreement.
                # The passage is journaled when it agrees or its window ends.
                self.metrics.held += 1
                done.set_result(None)
                return done
            if agreed.kind is VerdictKind.ACCEPT:
                assert agreed.agreement is not None
                read = agreed.read
                meta = agreed.agreement.metadata(_normalised(read.text))
                ingested = dataclasses.replace(ingested, read=read, consensus=meta)
        if verdict is Verdict.STALE:
            # Never coalesced: a replayed plate must not swallow the live car's read. No
            # read can merge into it either, so the lane keeps nothing of it (key "").
            offer = Offer(OfferKind.NEW, read, read.text, "", 1, 0.0)
        else:
            group = "" if read.direction == self.parts.access_point.direction else "against"
            offer = self.coalescer.offer(read, read.received_mono, group)
            if offer.kind == OfferKind.DUPLICATE:
                self.metrics.duplicates += 1
                return self._merged(read, offer.key, done)
        kept: asyncio.Future[int | None] = loop.create_future()
        _follow(kept, done)
        _remember(self._kept, offer.key, kept)
        self._start(self._process(read, offer, ingested, now, kept))
        return done

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # --- consensus: reads held until they agree --------------------------------

    def _arm_consensus_timer(self) -> None:
        """Wake when the next open passage ends (one timer per lane, never a task per read)."""
        deadline = self.consensus.next_deadline()
        if self._consensus_timer is not None:
            self._consensus_timer.cancel()
            self._consensus_timer = None
        if deadline is None:
            return
        delay = max(0.0, deadline - time.monotonic()) + 0.01
        self._consensus_timer = asyncio.get_running_loop().call_later(
            delay, self._end_passages, None)

    def _end_passages(self, now: float | None) -> None:
        """Journal each ended passage that never agreed (no_consensus); merge the others."""
        self._consensus_timer = None
        for ended in self.consensus.expire(time.monotonic() if now is None else now):
            self._ended(ended)
        if self._accepting:
            self._arm_consensus_timer()

    def _ended(self, ended: Ended) -> None:
        if ended.agreed:  # its event is journaled; the other readings were candidates
            return
        read = ended.read
        ingested = Ingested(read, Verdict.NO_CONSENSUS, (),
                            consensus=ended.agreement.metadata(_normalised(read.text)))
        kept: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        # Like a stale read: journaled on its own, never merged (key ""), never opens.
        offer = Offer(OfferKind.NEW, read, read.text, "", 1, 0.0)
        self._start(self._process(read, offer, ingested, time.time(), kept))

    def _merged(
        self, read: PlateRead, key: str, done: asyncio.Future[int | None]
    ) -> asyncio.Future[int | None]:
        """Answer a read merged into an earlier event with that event's commit."""
        kept = self._kept.get(key)
        if kept is None:  # forgotten long ago (bounded memory): that row committed
            done.set_result(None)
            return done
        _follow(kept, done)
        for listener in list(self.merged_listeners):
            try:
                listener(read)
            except Exception:
                log.exception("merged-read listener failed")
        return done

    async def _process(
        self,
        read: PlateRead,
        offer: Offer,
        ingested: Ingested,
        now: float,
        done: asyncio.Future[int | None],
    ) -> None:
        # `done` follows the event's commit (settled by a callback, a moment later).
        try:
            await self._handle(read, offer, ingested, now, done)
        except Exception:  # one bad read must never take the lane down
            log.exception("lane %s: failed to handle a read from %s", self.id, read.source)
            if not done.done():  # not kept: the source must not answer "taken"
                done.cancel()

    async def _handle(
        self,
        read: PlateRead,
        offer: Offer,
        ingested: Ingested,
        now: float,
        done: asyncio.Future[int | None],
    ) -> None:
        parts = self.parts
        decision = decide(read, parts.access_point, parts.rules.current, parts.state, now)
        reason = ingested.verdict.reason
        if reason is not None:
            # Stale, unread or against the lane: journaled with its own reason, never
            # opens. The policy's match still says whose plate it was.
            decision = dataclasses.replace(decision, allowed=False, reason=reason)
        key = offer.key
        previous = self._events.get(key) if offer.kind == OfferKind.UPDATE else None
        if previous is not None and (previous.allowed or not decision.allowed):
            # A better read of a vehicle already handled: only a deny turning into an
            # allow is acted on (Axis-style new → update); otherwise nothing changes.
            self.metrics.updates += 1
            _follow(previous.committed, done)
            return
        # Before any await (see module docstring): a racing read of the same vehicle
        # must see this decision, and state such as pass uses must already count it.
        passage_before = self.parts.state.record(decision, now)
        event_id = new_event_id()
        committed = done  # this read makes the event: its commit is the event's
        _remember(self._events, key, _Event(event_id, decision.allowed, committed))
        try:
            await self._act_and_journal(read, decision, ingested, now, event_id, previous,
                                        passage_before, committed)
        finally:
            if not committed.done():
                committed.cancel()

    async def _act_and_journal(
        self,
        read: PlateRead,
        decision: Decision,
        ingested: Ingested,
        now: float,
        event_id: str,
        previous: _Event | None,
        passage_before: tuple[Direction, float] | None,
        committed: asyncio.Future[int | None],
    ) -> None:
        relay_ms, relay_error = None, None
        gate_opened: bool | None = None
        if decision.allowed:
            if self.mode != Mode.HOLD_OPEN:
                relay_ms, relay_error = await self._pulse(read.received_mono)
            gate_opened = relay_error is None
            if relay_error:
                # Nobody went through: anti-passback and pass uses must not count it.
                self.parts.state.undo(decision, passage_before)
        self.metrics.decisions[decision.reason.value] += 1
        snap_path, snap_sha, snap_missing = await self._snapshot(event_id, read, now)
        # Personal data (the plate as read, the stored plate) lives only in the
        # journal's erasable columns, never in metadata: see gated.journal.
        metadata: dict[str, object] = {
            "source": read.source,
            "vendor": read.vendor,
            "match": _match_meta(decision),
            "flags": [*decision.flags, *ingested.flags],
            "inputs": {k: v for k, v in decision.inputs.items() if k not in _PERSONAL_INPUTS},
        }
        if read.camera_direction is not None:
            metadata["camera_direction"] = read.camera_direction[:32]
        if ingested.camera_skew_s is not None:
            metadata["camera_skew_s"] = round(ingested.camera_skew_s, 3)
        if previous is not None:
            metadata["updates_event_id"] = previous.event_id
        if relay_error:
            metadata["relay_error"] = relay_error
        if read.extra:
            metadata["camera"] = dict(read.extra)
        if ingested.consensus is not None:
            metadata["consensus"] = dict(ingested.consensus)
        captured = read.captured_at
        event = AccessEvent(
            event_id=event_id,
            tenant_id=self.parts.identity.tenant_id,
            site_id=self.parts.identity.site_id,
            device_id=self.parts.identity.device_id,
            created_at=now,
            event_type=decision.event_type.value,
            access_point=self.id,
            authorization_method=(
                AuthorizationMethod.AUTO_TAG
                if read.kind == CredentialKind.TAG
                else AuthorizationMethod.AUTO_PLATE
            ).value,
            decision_reason=decision.reason.value,
            rules_version=decision.rules_version,
            direction=str(decision.inputs["direction"]),
            resident_id=decision.resident_id,
            vehicle_id=decision.vehicle_id,
            pass_id=decision.pass_id,
            visitor_name=decision.visitor_name,
            vehicle_plate=str(decision.inputs.get("normalised") or "") or None,
            confidence_score=_journal_confidence(read.confidence),
            snapshot_path=snap_path,
            snapshot_sha256=snap_sha,
            snapshot_missing=snap_missing,
            read_to_relay_ms=relay_ms,
            clock_unsynced=self.parts.clock.unsynced(),
            metadata=metadata,
            captured_at=(
                float(captured)
                if isinstance(captured, int | float) and math.isfinite(captured)
                else None
            ),
            gate_opened=gate_opened,
        )
        seq = await self._journal(event, read.received_mono)
        if seq is None:  # held or refused: never acknowledged as kept
            committed.cancel()
        else:
            committed.set_result(seq)
        if relay_error:
            await self.parts.auditor.record(
                "relay_pulse",
                "relay",
                resource_id=self.id,
                status="failure",
                error_message=relay_error,
                metadata={"event_id": event_id},
            )
        self._notify(event, decision)

    async def _pulse(self, received_mono: float) -> tuple[float | None, str | None]:
        """Open once through the gate machine; (read→relay ms, None) or (None, error).

        The latency is None when the machine gave no order (the relay is already
        held, e.g. for a vehicle standing in the gate).
        """
        try:
            ordered = await self.apply(gm.OpenRequested(self.pulse_ms))
        except HardwareError as err:
            self.metrics.relay_failures += 1
            log.error("lane %s: relay did not open: %s", self.id, err)
            return None, str(err)
        if not ordered:
            return None, None
        latency = (time.monotonic() - received_mono) * 1000
        self.metrics.read_to_relay_ms.observe(latency)
        return latency, None

    @property
    def pulse_ms(self) -> int:
        """How long an open pulse energises this lane's relay."""
        return self.cfg.relay.pulse_ms

    async def _snapshot(
        self, event_id: str, read: PlateRead, now: float
    ) -> tuple[str | None, str | None, bool]:
        """Store the payload's picture, else the camera's latest frame; (path, sha256, missing).

        Filed by the device's time (`now`, the row's created_at), never the camera's:
        a camera clock that is off must not scatter pictures across folders.
        """
        camera = self.parts.camera
        if read.snapshot is None and camera is None:
            return None, None, False

        def grab_and_save() -> tuple[str | None, str | None, bool]:
            jpeg = read.snapshot if read.snapshot is not None else camera.snapshot_jpeg()  # type: ignore[union-attr]
            if jpeg is None:
                return None, None, True
            try:
                path, sha = self.parts.snapshots.save(event_id, jpeg, now)
            except (GatedError, OSError) as err:
                log.warning("lane %s: snapshot not stored: %s", self.id, err)
                return None, None, True
            return path, sha, False

        path, sha, missing = await asyncio.to_thread(grab_and_save)
        if missing:
            self.metrics.snapshots_missing += 1
        return path, sha, missing

    async def _journal(self, event: AccessEvent, since_mono: float) -> int | None:
        """Append once; the row's seq, or None when it is not (yet) on disk.

        No retry loop here: one task per read retrying on its own back-off would grow
        without bound on a full disk and commit reads out of order. The daemon's append
        (gated.journal.hold) holds an event the storage refused, in order and bounded,
        and writes it once the disk takes writes again; until then the read is simply
        not acknowledged (the camera is answered 503).
        """
        try:
            seq = await self.parts.append(event)
        except JournalError as err:
            self.metrics.journal_failures += 1
            log.debug("lane %s: event %s not journaled: %s", self.id, event.event_id, err)
            return None
        self.metrics.journal_lag_ms.observe((time.monotonic() - since_mono) * 1000)
        return seq

    def _notify(self, event: AccessEvent, decision: Decision | None) -> None:
        for listener in list(self.listeners):
            try:
                listener(event, decision)
            except Exception:
                log.exception("event listener failed")

    # --- guards, buttons, remote commands ------------------------------------

    async def open_manually(
        self, *, method: AuthorizationMethod, actor_id: str | None = None, note: str = ""
    ) -> AccessEvent:
        """Open once on a person's or a signed command's authority; the journaled access event.

        Only gated.control calls this: it has checked the actor and writes the audit row.
        """
        started = time.monotonic()
        now = time.time()
        relay_ms, relay_error = await self._pulse(started)
        reason = (
            Reason.REMOTE_COMMAND if method == AuthorizationMethod.REMOTE else Reason.GUARD_OVERRIDE
        )
        event_id = new_event_id()
        event = AccessEvent(
            event_id=event_id,
            tenant_id=self.parts.identity.tenant_id,
            site_id=self.parts.identity.site_id,
            device_id=self.parts.identity.device_id,
            created_at=now,
            event_type=(
                EventType.EXIT
                if self.parts.access_point.direction == Direction.OUT
                else EventType.ENTRY
            ).value,
            access_point=self.id,
            authorization_method=method.value,
            decision_reason=reason.value,
            rules_version=self.parts.rules.current.version,
            direction=self.parts.access_point.direction.value,
            authorized_by=actor_id,
            read_to_relay_ms=relay_ms,
            clock_unsynced=self.parts.clock.unsynced(),
            metadata={"note": note, **({"relay_error": relay_error} if relay_error else {})},
            gate_opened=relay_error is None,
        )
        await self._journal(event, started)
        self._notify(event, None)
        return event

    async def set_mode(self, mode: Mode) -> str | None:
        """Switch normal / lockdown / hold-open, driving the relay for hold-open.

        Returns the relay's error when it could not follow (the mode still changes:
        a lockdown must hold even when a board is unplugged). gated.control audits.
        """
        old = self.mode
        if old == mode:
            return None
        error = None
        try:
            if mode == Mode.HOLD_OPEN:
                await self.apply(gm.HoldRequested())
            elif old == Mode.HOLD_OPEN:
                # the machine defers the release while a vehicle stands in the gate
                await self.apply(gm.ReleaseRequested())
        except HardwareError as err:
            error = str(err)
        self.parts.state.set_mode(self.id, mode)
        return error

    async def relay_test(self, ms: int) -> None:
        """Pulse the relay for `ms` through the gate machine, with no access event."""
        await self.apply(gm.OpenRequested(ms))

    def status(self) -> dict[str, object]:
        """Mode, gate state, alarms, relay health and counters, as the front ends show them."""
        m = self.metrics
        return {
            "mode": self.mode.value,
            "direction": self.parts.access_point.direction.value,
            "gate": self.gate.state.value,
            "alarms": sorted(a.value for a in self.gate.alarms),
            "relay_fault": self.parts.relay.fault,
            "rules_version": self.parts.rules.current.version,
            "reads": m.reads,
            "duplicates": m.duplicates,
            "decisions": dict(m.decisions),
            "relay_failures": m.relay_failures,
            "journal_failures": m.journal_failures,
        }

    # --- the gate state machine and wired sensors -----------------------------

    async def apply(self, event: gm.GateEvent, at: float | None = None) -> bool:
        """Step the gate machine and carry out its relay order; True when one was given."""
        t = gm.step(self.gate, event, time.monotonic() if at is None else at)
        self.gate = t.gate
        for alarm in t.raised:
            log.warning("lane %s: gate alarm %s", self.id, alarm.value)
            self.parts.auditor.emit(
                "gate_alarm",
                "gate",
                resource_id=self.id,
                status="failure",
                error_message=alarm.value,
                metadata={"alarm": alarm.value, "state": t.state.value},
            )
        for alarm in t.cleared:
            self.parts.auditor.emit(
                "gate_alarm_cleared",
                "gate",
                resource_id=self.id,
                metadata={"alarm": alarm.value, "state": t.state.value},
            )
        order = t.order
        if order is None:
            return False
        if order.action == "pulse":
            await self.parts.relay.pulse(order.ms)
        elif order.action == "hold":
            await self.parts.relay.hold()
        else:
            await self.parts.relay.release()
        return True

    def on_sensor(self, event: InputEvent) -> None:
        """Feed a position-switch or presence edge into the gate state machine."""
        active = event.kind == "active"
        gate_event: gm.GateEvent = (
            gm.PositionChanged(closed=active)
            if event.input.endswith(":closed")
            else gm.PresenceChanged(present=active)
        )
        task = asyncio.get_running_loop().create_task(self._sensor(gate_event, event.at_mono))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _sensor(self, event: gm.GateEvent, at: float) -> None:
        try:
            await self.apply(event, at)
        except HardwareError as err:
            log.error("lane %s: relay order after a sensor change failed: %s", self.id, err)

    async def tick(self) -> None:
        """Step the machine at its deadlines (alarms, deferred releases) until cancelled."""
        while True:
            deadline = gm.next_deadline(self.gate)
            wait = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(wait)
            try:
                await self.apply(gm.Tick())
            except HardwareError as err:
                log.error("lane %s: relay order on a tick failed: %s", self.id, err)

    async def relay_recovered(self) -> None:
        """Re-apply hold-open after a relay board came back (a reconnect always releases)."""
        if self.mode == Mode.HOLD_OPEN or self.gate.hold_presence:
            await self.parts.relay.hold()

    # --- lifecycle -----------------------------------------------------------

    async def drain(self) -> None:
        """Stop taking reads and wait for every read in flight to be journaled."""
        self._accepting = False
        if self._consensus_timer is not None:
            self._consensus_timer.cancel()
        # Held reads are not dropped at a stop: their passages end now, journaled.
        self._end_passages(math.inf)
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


def _normalised(text: str) -> str:
    try:
        return normalise(text)
    except PayloadError:
        return ""


def _journal_confidence(confidence: float | None) -> float | None:
    """The read's confidence as the journal stores it: a finite 0..1 number or None.

    Sources validate their payloads, but a row the journal refuses would be
    retried forever; the policy has already treated such a value as too low.
    """
    if confidence is None or not math.isfinite(confidence) or not 0.0 <= confidence <= 1.0:
        return None
    return confidence


# Decision inputs that carry the plate itself; the row's vehicle_plate column holds it.
_PERSONAL_INPUTS = frozenset({"raw_text", "normalised", "confusion_key"})


def _remember(table: dict[str, _T], key: str, value: _T) -> None:
    """table[key] = value, bounded to _MAX_EVENTS (oldest go first); key "": nothing kept."""
    if not key:
        return
    table[key] = value
    if len(table) > _MAX_EVENTS:
        for old in list(table)[: _MAX_EVENTS // 4]:
            del table[old]


def _follow(source: asyncio.Future[int | None], target: asyncio.Future[int | None]) -> None:
    """Settle `target` as `source` settles (each waiter has its own future to cancel)."""

    def settle(done: asyncio.Future[int | None]) -> None:
        if target.done():
            return
        if done.cancelled() or done.exception() is not None:
            target.cancel()
        else:
            target.set_result(done.result())

    if source.done():
        settle(source)
    else:
        source.add_done_callback(settle)


def _match_meta(decision: Decision) -> dict[str, object] | None:
    m = decision.match
    if m is None:
        return None
    return {
        "kind": m.kind.value,
        "list": m.list,
        "distance": m.distance,
        "edits": [
            {"op": e.op, "position": e.position, "read": e.read, "stored": e.stored}
            for e in m.edits
        ],
    }
