"""Composition root: builds real or fake parts from the config and owns every task.

The daemon runs in *generations*: one generation is every relay, source,
camera, input and lane built from one config. SIGHUP validates the new config
first; a bad one is refused and audited and the running generation carries on.
A good one ends the generation (reads drained; relays whose configuration
changed released) and starts the next. The journal, the policy state (modes,
anti-passback, pass uses), the watchdog and every relay whose configuration is
unchanged outlive generations, so a reload never drops a held gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
import zoneinfo
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gated import __version__
from gated.audit import Auditor
from gated.clock import ClockWatch
from gated.config import (
    AnprHttpSourceConfig,
    CameraSourceConfig,
    Config,
    FrigateSourceConfig,
    Rdm6300SourceConfig,
    SerialLineSourceConfig,
    SimulatorSourceConfig,
    load_config,
    redacted,
)
from gated.control import Actor, ActorType, ControlPlane
from gated.errors import ConfigError, GatedError
from gated.health import Health
from gated.lane import Lane, LaneParts, RulesHolder
from gated.model import AccessEvent, AuditEvent, Decision, Direction, Mode, PlateRead
from gated.policy import AccessPoint, ClockView, MemoryPolicyState
from gated.supervise import Supervisor, TooManyFailuresError

if TYPE_CHECKING:  # the heavy parts are imported when the config uses them
    from gated.config import ButtonConfig, LaneConfig, RelayConfig
    from gated.hardware.anpr_http import AnprListener
    from gated.hardware.anpr_limits import RefusalSummary
    from gated.hardware.base import Emit, InputEvent, PlateSource, Relay
    from gated.homeassistant.bridge import HomeAssistantBridge
    from gated.journal import Journal
    from gated.journal.hold import JournalHold
    from gated.journal.recovery import Recovery
    from gated.mqttlink import LinkStats
    from gated.rules.index import RuleIndex
    from gated.rules.store import RuleStore
    from gated.snapshots import RemovedSnapshot, SnapshotStore
    from gated.sync.downlink import Downlink
    from gated.sync.service import SyncService

log = logging.getLogger(__name__)

RULES_POLL_S = 2.0
# Each step of a stop that can touch the disk (the stop record, closing the journal) gets
# this long; the whole stop gets STOP_DEADLINE_S, under the unit's TimeoutStopSec (20 s).
STOP_STEP_S = 5.0
STOP_DEADLINE_S = 17.0
SNAPSHOT_QUOTA_CHECK_S = 60.0
STATE_PRUNE_S = 600.0
HOLD_FLUSH_AT_STOP_S = 3.0  # last try to write held events at a stop (disk still full: fast)
RELAY_OPEN_WAIT_S = 10.0  # longest a generation waits for its relays before sources start


@dataclass
class Generation:
    """The parts built from one config."""

    cfg: Config
    lanes: dict[str, Lane] = field(default_factory=dict)
    relays: dict[str, Relay] = field(default_factory=dict)
    services: list[tuple[str, Callable[[], Any]]] = field(default_factory=list)
    listeners: list[AnprListener] = field(default_factory=list)  # for the status API
    mqtt_links: dict[str, LinkStats] = field(default_factory=dict)  # for metrics
    # kind = "camera" sources (gated.hardware.recognition_source): triggers and metrics
    recognising: list[Any] = field(default_factory=list)
    rules: RulesHolder | None = None
    store: RuleStore | None = None


class Daemon:
    """The gated daemon: journal, rule set, lanes and their devices."""

    def __init__(
        self,
        cfg: Config,
        *,
        config_path: str | None = None,
        pin_factory: Any = None,
        health: Health | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.pin_factory = pin_factory
        self.health = health or Health()
        self.clock = ClockWatch()
        self.state = MemoryPolicyState()
        # Schedules and pass windows follow the clock watch's view (docs/operations.md).
        self.clock.listeners.append(
            lambda synced, offset, plausible: self.state.set_clock(
                ClockView(synced, offset, plausible)))
        self._journal: Journal | None = None
        self.hold: JournalHold | None = None  # events the disk refused (gated.journal.hold)
        self._journal_ready = asyncio.Event()  # set once the journal is open
        self.auditor: Auditor | None = None
        self.generation: Generation | None = None
        self.event_listeners: list[Callable[..., None]] = []
        self.started = asyncio.Event()
        self._wake: asyncio.Queue[str] = asyncio.Queue()
        self._modes_seeded = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.snapshot_quota_check_s = SNAPSHOT_QUOTA_CHECK_S
        self.state_usage: tuple[int, int] | None = None  # (bytes used, quota) when a quota is set
        self._quota_exhausted = False
        self.state_prune_s = STATE_PRUNE_S
        # Relays whose configuration a reload did not change are handed to the next
        # generation as they are: a held gate is never dropped by a SIGHUP.
        self._carried_relays: dict[str, tuple[RelayConfig, Relay]] = {}
        self._pin_factory_for: tuple[Any, Any] | None = None  # (GpioConfig, factory)
        self._exit_reason: str | None = None  # why a component ended the daemon
        # Called once when stopping begins (SIGTERM, a fatal error): `gated run` arms its
        # hard exit deadline with it. Never set in-process (tests, the demo).
        self.on_stopping: Callable[[], None] | None = None
        self.journal_head: tuple[int, str, float] | None = None  # (seq, row_hash, when read)
        self.control: ControlPlane | None = None  # built once the journal is open
        self._front_ends: list[asyncio.Task[Any]] = []
        self.sync: SyncService | None = None  # upstream sync, when [sync] enabled
        self.downlink: Downlink | None = None  # signed commands and rule bundles, beside sync
        self.home_assistant: HomeAssistantBridge | None = None  # when [home_assistant] enabled

    # --- public control ------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the daemon to drain and stop (SIGTERM)."""
        self._stopping_began()
        self._wake.put_nowait("stop")

    def request_reload(self) -> None:
        """Ask the daemon to reload config and rules (SIGHUP)."""
        self._wake.put_nowait("reload")

    @property
    def journal(self) -> Journal:
        """The open journal (the daemon opens it first thing in run())."""
        if self._journal is None:
            raise GatedError("the journal is not open yet")
        return self._journal

    def lane(self, lane_id: str) -> Lane:
        """A running lane by id."""
        assert self.generation is not None
        return self.generation.lanes[lane_id]

    # --- main ----------------------------------------------------------------

    async def run(self) -> int:
        """Run until stopped; returns the process exit status.

        Once the journal is open, whatever fails (a full disk refusing the first write, a
        fault while stopping) the journal is closed and every relay released, each step
        bounded; a start or stop that could not be journaled is a non-zero status, so
        systemd restarts the unit instead of trusting a daemon that stopped writing.
        """
        from gated.journal import Journal
        from gated.journal.hold import JournalHeldError

        loop = asyncio.get_running_loop()
        for sig, action in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.request_reload),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, action)
        from gated.journal.recovery import recover_if_corrupt

        # A corrupt file is moved aside and a fresh journal started: a gate that cannot
        # open its journal would fail every start (systemd's restart loop) and open nothing.
        recovery = await asyncio.to_thread(recover_if_corrupt, self.cfg.journal.path)
        opened = await self._open_journal(Journal, log_disk_full=True)
        status = 1  # until a clean stop is journaled
        background: list[asyncio.Task[Any]] = []
        error: BaseException | None = None
        try:
            self.auditor = Auditor(self._append, self.cfg.site.identity, self.clock)
            self.hold = self._make_hold(self.auditor)
            background.append(asyncio.create_task(self.hold.run(), name="journal-hold"))
            self.control = ControlPlane(
                self._running_lanes,
                self.auditor,
                reload_rules=self._reload_rules_now,
                status_extra=self._status_extra,
            )
            if opened:
                await self._start_journaled(recovery, background, record_start=True)
            else:
                # The disk is too full to open the journal at all. Refusing to start opens
                # nothing; instead the gate runs, what it decides is held in memory, and the
                # rest of the start-up follows once the journal opens (docs/operations.md).
                self.health.set("journal-writes", False,
                                "the journal cannot be opened: the disk is full")
                with contextlib.suppress(JournalHeldError):
                    await self._record_start()
                background.append(asyncio.create_task(
                    self._open_when_possible(Journal, recovery, background),
                    name="journal-open"))
            status = await self._run_generations()
        except BaseException as err:
            error = err
            raise
        finally:
            status = await self._shut_down(status, error, background)
        return status

    async def _open_journal(self, journal_type: type[Journal], *, log_disk_full: bool) -> bool:
        """Open the journal; False (not raised) when the disk is too full to open it."""
        from gated.journal.writer import JournalWriteError

        try:
            self._journal = await journal_type.open(
                self.cfg.journal.path,
                wal_limit_bytes=self.cfg.journal.wal_limit_mb * 1024 * 1024)
        except JournalWriteError as err:
            if not err.disk_full:
                raise
            if log_disk_full:
                log.error("%s: starting degraded, events are held in memory", err)
            return False
        self._journal_ready.set()
        return True

    async def _open_when_possible(self, journal_type: type[Journal], recovery: Recovery | None,
                                  background: list[asyncio.Task[Any]]) -> None:
        """Retry opening the journal (capped back-off), then finish the start-up."""
        delay = 0.5
        while not await self._open_journal(journal_type, log_disk_full=False):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        log.warning("journal opened: writing the events held in memory")
        await self._start_journaled(recovery, background, record_start=False)

    async def _start_journaled(self, recovery: Recovery | None,
                               background: list[asyncio.Task[Any]], *,
                               record_start: bool) -> None:
        """The start-up steps that need an open journal, then the long-lived services."""
        from gated.journal.hold import JournalHeldError

        assert self.hold is not None
        self.health.set("journal", True, critical=True)
        if recovery is not None:
            await self._record_recovery(recovery)
        # Before the held events are written: they were recorded in the live state as
        # they were decided, and must not be counted a second time from their rows.
        await self._seed_state()
        self.hold.attach(self.journal)
        # A full disk at start-up: the record is held (written once space returns) and
        # the gate starts degraded; refusing to start would open nothing at all.
        if record_start:
            with contextlib.suppress(JournalHeldError):
                await self._record_start()
        with contextlib.suppress(JournalHeldError):
            await self._report_journal_check()
        background.extend(self._start_long_lived())

    async def _record_start(self) -> None:
        assert self.auditor is not None
        await self.auditor.record(
            "daemon_start",
            "daemon",
            new_values={"version": __version__, "config": redacted(self.cfg)},
        )

    async def _report_journal_check(self) -> None:
        """Log, audit and show as unhealthy what the journal's checks at open found."""
        assert self.auditor is not None
        problem = self.journal.integrity_problem
        if not problem:
            return
        # The gate keeps working (a new event is worth more than a refusal to start), but
        # the chain's end does not verify or the file is no longer append-only: someone
        # edited the file, or the disk lied.
        log.error("journal check failed at start-up: %s", problem)
        self.health.set("journal-chain", False, problem)
        await self.auditor.record(
            "journal_check", "journal", status="failure", error_message=problem
        )

    async def _record_recovery(self, recovery: Recovery) -> None:
        """First row of the fresh journal: what was wrong, where the old file went, its head."""
        assert self.auditor is not None
        detail = f"corrupt journal moved aside to {recovery.moved_to.name}: {recovery.problem}"
        self.health.set("journal-recovery", False, detail)
        record = self.auditor.build(
            "journal_recovered", "journal", status="failure", error_message=recovery.problem,
            metadata={
                "moved_to": str(recovery.moved_to),
                "old_head_seq": recovery.old_head[0] if recovery.old_head else None,
                "old_head_hash": recovery.old_head[1] if recovery.old_head else None,
                "check_ms": round(recovery.check_ms, 1),
                "last_readable_seq": recovery.last_readable[0] if recovery.last_readable else None,
                "last_readable_hash": recovery.last_readable[1] if recovery.last_readable else None,
            })
        await self.journal.continue_from(record, recovery.old_head)

    def _start_long_lived(self) -> list[asyncio.Task[Any]]:
        """Start the services that outlive generations, each supervised like a component.

        Front ends (the control socket; next the status page) are kept apart: they stop
        taking requests first at SIGTERM, before reads are drained and relays released.
        """
        supervisor = Supervisor(self.cfg.supervisor, on_failure=self._on_component_failure)
        services: list[tuple[str, Callable[[], Any]]] = [
            ("health", self.health.run),
            ("journal-head", self._publish_head),
            ("journal-checkpoint", self._checkpoint_wal),
        ]
        front: list[tuple[str, Callable[[], Any]]] = []
        if self.cfg.control.socket:
            from gated.control_socket import ControlSocket

            assert self.control is not None
            control_socket = ControlSocket(
                self.control, self.cfg.control.socket, group=self.cfg.control.socket_group
            )
            front.append((control_socket.name, control_socket.run))
        if self.cfg.web.enabled:
            front.append(self._build_web())
        if self.cfg.home_assistant.enabled:
            # A front end: it takes commands, so it stops with the control socket.
            front.append(self._build_home_assistant())
        if self.cfg.sync.enabled:
            from gated.sync.service import SyncService

            assert self.auditor is not None
            self.sync = SyncService(
                self.cfg, self.journal, audit=self._sync_audit, status=self._sync_status,
                backlog=self._sync_backlog, version=__version__)
            services.append((self.sync.name, self.sync.run))
            # The downlink is a front end (remote people acting on the gate): it stops taking
            # commands with the control socket, before reads are drained and relays released.
            self.downlink = self._make_downlink(self.sync)
            if self.downlink is not None:
                front.append((self.downlink.name, self.downlink.run))
        if self.cfg.alerts.enabled and self.cfg.alerts.channels:
            services.append(self._build_alerts())
        tasks = []
        for name, run in services + front:
            task = asyncio.create_task(supervisor.keep_running(name, run), name=name)
            tasks.append(task)
            if (name, run) in front:
                self._front_ends.append(task)
        return tasks

    def _build_alerts(self) -> tuple[str, Callable[[], Any]]:
        """Local alerts (docs/alerts.md): raised into the journal, delivered from there."""
        from gated.alerts.service import AlertService
        from gated.alerts.watch import daemon_conditions

        assert self.auditor is not None

        def health(name: str, ok: bool, detail: str) -> None:
            self.health.set(name, ok, detail)  # not critical: the gate works without alerts

        service = AlertService(
            self.cfg, self.journal, self.auditor.record, version=__version__,
            conditions=lambda: daemon_conditions(self, service.settings), health=health)
        return service.name, service.run

    def _make_downlink(self, sync: SyncService) -> Downlink | None:
        """The downlink on the sync's MQTT link and HTTP endpoint; None when it cannot start."""
        from gated.sync.downlink import Downlink

        assert self.control is not None and self.auditor is not None
        cfg = self.cfg
        clock_unsynced: Callable[[], bool] = (
            self.clock.unsynced if cfg.sync.commands_need_synchronised_clock else lambda: False)
        try:
            return Downlink(
                cfg,
                perform=self.control.perform,
                audit=self.auditor.record,
                apply_rules=rule_bundle_importer(cfg.rules.path, cfg.site.timezone),
                reload_rules=self._reload_rules_now,
                link=sync.link,
                device_key=sync.key,
                clock_unsynced=clock_unsynced,
                health=self.health.set,  # the HTTP command poller's state (sync-commands)
            )
        except (GatedError, OSError, sqlite3.Error) as err:
            # The gate and the uplink keep working: a broken state file must not stop them.
            log.error("downlink not started (no remote commands or rule bundles): %s", err)
            self.health.set("downlink", False, str(err))
            return None

    async def _sync_audit(self, action: str, resource_type: str, **fields: Any) -> int:
        """The sync's audit rows; a countersigned head is also copied beside the journal.

        The copy is the anchor `gated journal verify --countersigned` still finds when the
        journal's tail, countersignature rows included, was cut off.
        """
        assert self.auditor is not None
        seq = await self.auditor.record(action, resource_type, **fields)
        if action == "head_countersigned" and isinstance(fields.get("new_values"), dict):
            from gated.journal.verify import save_countersigned_copy

            try:
                await asyncio.to_thread(
                    save_countersigned_copy, self.cfg.journal.path, fields["new_values"])
            except OSError as err:
                log.warning("could not keep a copy of the countersigned head: %s", err)
        return seq

    def _build_web(self) -> tuple[str, Callable[[], Any]]:
        """The status page (gated.web): acts through the control plane, reads the journal."""
        from gated.web.server import WebDeps, WebServer

        assert self.control is not None and self.auditor is not None
        rule_desk = WebRuleDesk(self)
        deps = WebDeps(
            control=self.control, journal=self.journal, audit=self.auditor.record,
            snapshot_dir=self.cfg.journal.snapshot_dir, timezone=self.cfg.site.timezone,
            passes=WebPassDesk(self), rules=rule_desk, names=rule_desk.names,
            decision_context=self._decision_context,
            metrics_text=self.metrics_text,
            sync_backlog=self._sync_backlog if self.cfg.sync.enabled else None,
        )
        web = WebServer(self.cfg.web, deps)
        return web.name, web.run

    def _build_home_assistant(self) -> tuple[str, Callable[[], Any]]:
        """Home Assistant discovery, states and commands (gated.homeassistant), own link."""
        from gated.homeassistant.bridge import HomeAssistantBridge, LaneView

        assert self.control is not None and self.auditor is not None

        def lanes() -> dict[str, LaneView]:
            return {lane_id: LaneView(lane.cfg.name, lane.status())
                    for lane_id, lane in self._running_lanes().items()}

        def problems() -> list[str]:
            return [name for name, c in self.health.components.items() if not c.ok]

        bridge = HomeAssistantBridge(
            self.cfg, control=self.control, journal=self.journal, lanes=lanes,
            audit=self.auditor.record, problems=problems,
            names=WebRuleDesk(self).names if self.cfg.home_assistant.expose_names else None,
            # Not critical: Home Assistant losing sight of the gate does not stop the gate.
            on_link_state=lambda up, detail: self.health.set("mqtt-home-assistant", up, detail),
        )
        self.home_assistant = bridge
        return bridge.name, bridge.run

    def _decision_context(self, lane_id: str) -> tuple[AccessPoint, RuleIndex] | None:
        """A running lane's access point and the rule index it decides with now (replay)."""
        lane = self._running_lanes().get(lane_id)
        if lane is None:
            return None
        return lane.parts.access_point, lane.parts.rules.current

    async def _sync_status(self) -> dict[str, Any]:
        """What the heartbeat reports of the daemon: health, lanes, the rule-set version."""
        lanes = self._running_lanes()
        gen = self.generation
        return {
            "healthy": self.health.healthy(),
            "components": {name: {"ok": c.ok, "detail": c.detail}
                           for name, c in sorted(self.health.components.items())},
            "lanes": {lane_id: {"mode": lane.mode.value, "gate": lane.gate.state.value}
                      for lane_id, lane in lanes.items()},
            "rules_version": (int(gen.rules.current.version)
                              if gen is not None and gen.rules is not None else None),
            "rules_bundle": self.downlink.status() if self.downlink is not None else None,
        }

    async def _sync_backlog(self) -> dict[str, Any]:
        """Unsynced rows per stream and the oldest one's age, for the heartbeat."""
        counts, oldest = await self.journal.backlog()
        return {"counts": counts,
                "oldest_age_s": None if oldest is None else max(0.0, time.time() - oldest)}

    async def _stop_front_ends(self) -> None:
        """Stop taking requests from people and remote systems (first step of a stop)."""
        for task in self._front_ends:
            task.cancel()
        await asyncio.gather(*self._front_ends, return_exceptions=True)
        self._front_ends.clear()

    def _running_lanes(self) -> dict[str, Lane]:
        return dict(self.generation.lanes) if self.generation is not None else {}

    async def _reload_rules_now(self) -> int:
        """Index the rule store's newest version now (gated ctl reload-rules)."""
        gen = self.generation
        if gen is None or gen.rules is None:
            raise GatedError("no generation is running")
        self._install_index(gen, await self._index_rules(gen.cfg, gen))
        return int(gen.rules.current.version)

    async def index_now(self, version: int) -> None:
        """Decide on a version saved here from the next read on, not the next rule poll."""
        gen = self.generation
        if gen is None or gen.rules is None or gen.rules.current.version >= version:
            return
        try:
            index = await self._index_rules(gen.cfg, gen)
        except Exception as err:  # the rule poll retries and reports it in health
            log.error("could not index rule-set version %d: %s", version, err)
            return
        self._install_index(gen, index)  # the poll may have installed a newer one meanwhile

    def _install_index(self, gen: Generation, index: RuleIndex) -> bool:
        """Swap a freshly built index in; False (dropped) when it is older than the current.

        Atomic: decisions in flight keep the old index. The rule poll, `gated ctl
        reload-rules` and a status-page edit each build one; whichever finishes last must
        not take the lanes back to a version another path already installed.
        """
        assert gen.rules is not None
        if index.version < gen.rules.current.version:
            return False
        gen.rules.current = index
        self.health.set("rules", True, f"version {index.version}")
        return True

    async def _status_extra(self) -> dict[str, Any]:
        """Daemon-wide status beside the lanes: health, journal head, version."""
        head = self.journal_head
        return {
            "version": __version__,
            "health": {
                "healthy": self.health.healthy(),
                "summary": self.health.summary(),
                "components": {
                    name: {"ok": c.ok, "detail": c.detail}
                    for name, c in sorted(self.health.components.items())
                },
            },
            "journal": {"head_seq": head[0] if head else None,
                        "head_hash": head[1] if head else None},
        }

    async def _run_generations(self) -> int:
        """Run generation after generation until a stop (0) or a component gave up (1)."""
        assert self.auditor is not None
        status = 0
        try:
            while True:
                outcome = await self._run_generation(self.cfg)
                if outcome == "stop":
                    break
        except* TooManyFailuresError as group:
            err = group.exceptions[0]
            log.critical("%s", err)
            self.health.stopping()
            self._exit_reason = str(err)
            status = 1
        return status

    async def _shut_down(
        self, status: int, error: BaseException | None, background: list[asyncio.Task[Any]]
    ) -> int:
        """Release relays, journal the stop and close the journal, each step bounded."""
        self._stopping_began()
        await self._release_carried()
        if self.sync is not None:
            # Before its task is cancelled: in-flight events get a bounded wait for their
            # acks (marked synced), and "offline" is published. The rest goes next start.
            try:
                await asyncio.wait_for(self.sync.stop(), STOP_STEP_S)
            except (GatedError, TimeoutError) as err:
                log.warning("sync did not stop cleanly: %s", err or "timed out")
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.downlink is not None:
            with contextlib.suppress(Exception):
                self.downlink.close()
        if self.hold is not None:
            # One last bounded try; what is still held now dies with the process. It was
            # never acknowledged, but the count must be on record somewhere: the log.
            lost = await self.hold.close(HOLD_FLUSH_AT_STOP_S)
            if lost or self.hold.unreported_drops:
                log.critical("stopping with %d held events not journaled (lost); %d dropped "
                             "earlier by [journal] hold_max_events", lost,
                             self.hold.dropped_total)
                status = 1  # gone without a row saying so: systemd must know
        if self.auditor is not None:
            if error is not None and not isinstance(error, Exception):
                reason: str | None = f"{type(error).__name__}"
            elif error is not None:
                reason = f"{type(error).__name__}: {error}"
            else:
                reason = self._exit_reason
            try:
                if reason is None:
                    await asyncio.wait_for(
                        self.auditor.record("daemon_stop", "daemon"), STOP_STEP_S
                    )
                else:
                    await asyncio.wait_for(
                        self.auditor.record(
                            "daemon_exit", "daemon", status="failure", error_message=reason
                        ),
                        STOP_STEP_S,
                    )
                await asyncio.wait_for(self.auditor.drain(), STOP_STEP_S)
            except (GatedError, TimeoutError) as err:
                # A full disk: the stop is not on record, so it must not look clean.
                log.critical("could not journal why the daemon stopped: %s", err or "timed out")
                status = 1
        with contextlib.suppress(GatedError, TimeoutError, sqlite3.Error):
            seq, digest = await asyncio.wait_for(self.journal.head(), STOP_STEP_S)
            log.info("journal head at stop: seq %d row_hash %s", seq, digest)
        try:
            await asyncio.wait_for(self.journal.close(), STOP_STEP_S)
        except (GatedError, TimeoutError, sqlite3.Error) as err:
            log.critical("could not close the journal: %s", err or "timed out")
            status = 1
        return status

    def _stopping_began(self) -> None:
        if self.on_stopping is not None:
            hook, self.on_stopping = self.on_stopping, None
            hook()

    async def _publish_head(self) -> None:
        """Log the chain head and show it in the metrics every journal.head_interval_s.

        The head (seq, row_hash) is what an outside record anchors the chain with: a
        tail cut off or a chain rebuilt after a published head no longer contains it.
        A fixed interval, not every row: each new hash is a new metric series.
        """
        failing = False
        while True:
            try:
                seq, digest = await self.journal.head()
            except (GatedError, sqlite3.Error) as err:
                if not failing:
                    log.warning("cannot read the journal head: %s", err)
                failing = True
            else:
                failing = False
                self.journal_head = (seq, digest, time.time())
                log.info("journal head: seq %d row_hash %s", seq, digest)
            await asyncio.sleep(self.cfg.journal.head_interval_s)

    async def _append(self, event: AccessEvent | AuditEvent) -> int:
        """Journal append that keeps the journal's health current for the watchdog.

        Through the hold: an event the disk refused is held in memory (JournalHeldError),
        shown as "journal-writes" unhealthy, and written once the disk takes it.
        """
        from gated.journal.hold import JournalHeldError  # loaded with the journal by run()

        try:
            seq = await (self.hold.append(event) if self.hold is not None
                         else self.journal.append(event))
        except JournalHeldError:
            raise
        except GatedError as err:
            self.health.set("journal", False, str(err), critical=True)
            raise
        self.health.set("journal", True, critical=True)
        return seq

    def _make_hold(self, auditor: Auditor) -> JournalHold:
        """The bounded in-memory queue for events the disk refused (gated.journal.hold)."""
        from gated.journal.hold import JournalHold

        def changed(held: int, detail: str) -> None:
            # Not critical: a watchdog restart would lose the held events and free no
            # space. The gate keeps deciding; health, metrics and the page say degraded.
            self.health.set("journal-writes", held == 0, detail)

        def dropped(count: int) -> AuditEvent:
            return auditor.build(
                "journal_hold_dropped", "journal", status="failure",
                error_message=f"{count} events the disk refused were dropped from memory",
                metadata={"dropped": count, "hold_max_events": self.cfg.journal.hold_max_events})

        return JournalHold(self._journal, self.cfg.journal.hold_max_events,
                           on_change=changed, dropped_record=dropped)

    async def _seed_state(self) -> None:
        """Rebuild pass uses and anti-passback state from the journal, the source of truth.

        The rows hold what the live state recorded: the direction the lane resolved
        (gated.ingest), the decision's event_type, and gate_opened = 0 where the relay
        failed (no passage, no pass use), so a restart never changes an outcome.
        """
        for pass_id, uses in (await self.journal.pass_uses()).items():
            for _ in range(uses):
                self.state.record_pass_use(pass_id)
        since = time.time() - self.cfg.policy.anti_passback_reset_s
        for subject, (direction, at) in (await self.journal.last_passages(since)).items():
            self.state.record_passage(subject, Direction(direction), at)

    async def _run_generation(self, cfg: Config) -> str:
        gen = await self._build(cfg)
        self.generation = gen
        supervisor = Supervisor(cfg.supervisor, on_failure=self._on_component_failure)
        tasks: list[asyncio.Task[Any]] = []
        what: str | None = None  # stays None when a component gave up
        try:
            async with asyncio.TaskGroup() as tg:
                # Relays first: no camera listener accepts, and READY=1 is not sent,
                # before every relay is open (or has had its bounded time to open).
                relay_names = {relay.name for relay in gen.relays.values()}
                for name, run in gen.services:
                    if name in relay_names:
                        tasks.append(tg.create_task(supervisor.keep_running(name, run), name=name))
                await self._relays_open(gen)
                for name, run in gen.services:
                    if name not in relay_names:
                        tasks.append(tg.create_task(supervisor.keep_running(name, run), name=name))
                tasks.append(tg.create_task(self._watch_rules(gen), name="rules-watch"))
                if not self.started.is_set():
                    await self._listeners_bound(gen)
                    # Everything built so far is long-lived: keep it out of the cyclic
                    # collector's generations so its pauses stay short on the read path.
                    gc.freeze()
                    self.health.ready()
                    self.started.set()
                    log.info("gated %s running: %d lane(s)", __version__, len(gen.lanes))
                while True:
                    what = await self._wake.get()
                    if what == "stop":
                        self.health.stopping()  # before draining: systemd may take a while to hear
                        await self._stop_front_ends()
                        break
                    if what == "reload" and await self._reload():
                        break
                await self._end_generation(gen, tasks)
        finally:
            # Also when a component gave up: reads already taken are journaled first.
            await self._drain(gen)
            keep = self._unchanged_relays(gen) if what == "reload" else set()
            await self._release(gen, keep=keep)
        return "stop" if what == "stop" else "reload"

    async def _release_carried(self) -> None:
        """Release relays handed to a generation that never started (its build failed)."""
        while self._carried_relays:
            name, (_, relay) = self._carried_relays.popitem()
            try:
                await relay.release()
            except Exception as err:
                log.error("could not release relay %s: %s", name, err)
            with contextlib.suppress(Exception):
                await relay.aclose()

    def _unchanged_relays(self, gen: Generation) -> set[str]:
        """Lanes whose relay (and GPIO backend) the newly loaded config leaves as they are."""
        if gen.cfg.gpio != self.cfg.gpio:
            return set()
        keep = set()
        for lane_cfg in self.cfg.lanes:
            old = next((lane for lane in gen.cfg.lanes if lane.id == lane_cfg.id), None)
            if old is not None and old.relay == lane_cfg.relay and lane_cfg.id in gen.relays:
                keep.add(lane_cfg.id)
        return keep

    async def _relays_open(self, gen: Generation, timeout_s: float = RELAY_OPEN_WAIT_S) -> None:
        """Wait until every relay is open, for at most timeout_s.

        Bounded: a board left unplugged must not keep the cameras' reads out of the
        journal; its fault is in health, and an allowed read then is journaled with
        gate_opened = 0.
        """
        deadline = time.monotonic() + timeout_s
        # Polled: the Relay protocol reports faults, not a first open (see _hold_when_open).
        while any(relay.fault is not None for relay in gen.relays.values()):
            if time.monotonic() >= deadline:
                faulted = [r.name for r in gen.relays.values() if r.fault is not None]
                log.error("relay(s) %s not open after %g s: starting without them",
                          ", ".join(faulted), timeout_s)
                return
            await asyncio.sleep(0.02)

    async def _listeners_bound(self, gen: Generation, timeout_s: float = 10.0) -> None:
        """Wait until camera listeners accept connections, so READY means cameras can push."""
        waits = [listener.started.wait() for listener in gen.listeners]
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits), timeout_s)
            except TimeoutError:
                log.warning("a camera listener did not start within %g s", timeout_s)

    async def _drain(self, gen: Generation, timeout_s: float = 10.0) -> None:
        """Let reads in flight reach the journal (bounded: shutdown must not hang)."""
        drains = [lane.drain() for lane in gen.lanes.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*drains), timeout_s)
        except TimeoutError:
            log.error("reads still in flight after %g s at shutdown", timeout_s)

    async def _end_generation(self, gen: Generation, tasks: list[asyncio.Task[Any]]) -> None:
        # Sources first, so no new reads arrive; then let reads in flight finish.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _release(
        self, gen: Generation, keep: set[str] | frozenset[str] = frozenset()
    ) -> None:
        """Leave every relay in its safe state (released) and free its port, except `keep`."""
        for name, relay in gen.relays.items():
            if name in keep:
                self._carried_relays[name] = (gen.cfg.lane(name).relay, relay)
                continue
            try:
                await relay.release()
            except Exception as err:  # a faulted board still gets the other relays released
                log.error("could not release relay %s: %s", name, err)
            with contextlib.suppress(Exception):
                await relay.aclose()
        if gen.store is not None:
            with contextlib.suppress(Exception):
                gen.store.close()

    async def _reload(self) -> bool:
        """Validate the config file again; True when a new generation should start."""
        assert self.auditor is not None
        if not self.config_path:
            return False
        try:
            new = load_config(self.config_path)
        except ConfigError as err:
            log.error("reload refused, keeping the running config: %s", err)
            await self.auditor.record(
                "config_reload", "config", status="failure", error_message=str(err)
            )
            return False
        if new.journal.path != self.cfg.journal.path:
            log.warning("journal.path changed: takes effect at the next restart")
        await self.auditor.record(
            "config_reload", "config", old_values=redacted(self.cfg), new_values=redacted(new)
        )
        self.cfg = new
        return True

    def _on_component_failure(self, name: str, err: BaseException, count: int) -> None:
        assert self.auditor is not None
        self.health.set(name, False, str(err))
        self.auditor.emit(
            "component_failure",
            "component",
            resource_id=name,
            status="failure",
            error_message=f"{type(err).__name__}: {err}",
            metadata={"failures_in_window": count},
        )

    # --- building ------------------------------------------------------------

    async def _build(self, cfg: Config) -> Generation:
        """Every part of one generation; on failure, whatever was opened is released."""
        gen = Generation(cfg)
        try:
            await self._build_into(gen)
        except BaseException:
            await self._release(gen)
            raise
        return gen

    async def _build_into(self, gen: Generation) -> None:
        from gated.rules.store import RuleStore
        from gated.snapshots import SnapshotStore

        assert self.auditor is not None
        cfg = gen.cfg
        gen.store = RuleStore(cfg.rules.path)
        index = await self._index_rules(cfg, gen)
        gen.rules = RulesHolder(index)
        self.health.set("rules", True, f"version {index.version}")
        if index.version == 0:
            log.warning(
                "the rule set at %s is empty: every plate is denied until one is imported "
                "(gated rules import FILE)",
                cfg.rules.path,
            )
        snapshots = SnapshotStore(
            cfg.journal.snapshot_dir,
            cfg.journal.snapshot_quota_mb * 1024 * 1024,
            max_bytes=cfg.journal.snapshot_max_kb * 1024,  # larger pictures: row says missing
        )
        gen.services.append(("snapshot-quota", _bind(self._keep_snapshot_quota, snapshots)))
        if cfg.retention.enabled:
            gen.services.append(("retention", _bind(self._keep_retention, snapshots)))
            if cfg.retention.state_quota_mb:
                gen.services.append(("state-quota", _bind(self._keep_state_quota, snapshots)))
        if cfg.privacy.unknown_plate_hash_after_h > 0:
            gen.services.append(("unknown-plates", _bind(self._forget_unknown_plates, snapshots)))
        gen.services.append(("policy-state-prune", self._prune_policy_state))
        if cfg.metrics.textfile:
            gen.services.append(("metrics-textfile", _bind(self._write_metrics, gen)))
        tz = zoneinfo.ZoneInfo(cfg.site.timezone)
        pin_factory = self._gpio_factory(cfg)
        for lane_cfg in cfg.lanes:
            if not self._modes_seeded:
                self.state.set_mode(lane_cfg.id, lane_cfg.mode)
            carried = self._carried_relays.pop(lane_cfg.id, None)
            if carried is not None and carried[0] == lane_cfg.relay:
                relay = carried[1]
            else:
                relay = self._make_relay(lane_cfg, pin_factory)
            gen.relays[lane_cfg.id] = relay
            gen.services.append((relay.name, relay.run))
            camera = None
            if lane_cfg.camera is not None:
                from gated.hardware.cameras import OpenCvCamera

                camera = OpenCvCamera(f"{lane_cfg.id}-camera", lane_cfg.camera)
                gen.services.append((camera.name, camera.run))
            for src in lane_cfg.sources:
                if isinstance(src, CameraSourceConfig):
                    recognising = self._recognising_camera(src, lane_cfg.id, gen)
                    camera = camera or recognising.camera  # its frames are the lane's pictures
            parts = LaneParts(
                identity=cfg.site.identity,
                access_point=AccessPoint(lane_cfg.id, lane_cfg.direction, cfg.policy, tz),
                rules=gen.rules,
                state=self.state,
                relay=relay,
                append=self._append,
                snapshots=snapshots,
                auditor=self.auditor,
                clock=self.clock,
                camera=camera,
            )
            lane = Lane(lane_cfg, parts)
            lane.listeners.append(self._on_event)
            gen.lanes[lane_cfg.id] = lane
            gen.services.append((f"{lane_cfg.id}-gate", lane.tick))
            if lane.mode == Mode.HOLD_OPEN:
                from gated import gate as gm

                try:
                    await lane.apply(gm.HoldRequested())
                except GatedError:
                    # A serial board is opened by its run(), after this. Its first
                    # successful open is no *recovery* (nothing failed before), so
                    # on_fault never calls relay_recovered(): hold once it is open.
                    gen.services.append((f"{lane_cfg.id}-hold", _bind(_hold_when_open, lane)))
        self._modes_seeded = True
        self._build_sources(cfg, gen)
        self._build_inputs(cfg, gen, pin_factory)

    def _recognising_camera(self, src: CameraSourceConfig, lane_id: str, gen: Generation) -> Any:
        """A plain camera gated reads plates from (imports OpenCV's capture code only now)."""
        from gated.hardware.recognition_source import RecognisingCamera
        from gated.hardware.threads import call_in_loop

        loop = asyncio.get_running_loop()
        component = f"camera-{src.name}"

        def on_state(up: bool, detail: str) -> None:  # capture or worker thread
            call_in_loop(loop, self.health.set, component, up, detail)

        source = RecognisingCamera(src, lane_id, on_state=on_state)
        gen.recognising.append(source)
        gen.services.append(_source(source, self._emit))
        return source

    def _gpio_factory(self, cfg: Config) -> Any:
        """The gpiozero pin factory, kept across generations while [gpio] is unchanged."""
        if self.pin_factory is not None:
            return self.pin_factory
        if self._pin_factory_for is None or self._pin_factory_for[0] != cfg.gpio:
            self._pin_factory_for = (cfg.gpio, _pin_factory(cfg.gpio.pin_factory))
        return self._pin_factory_for[1]

    def _make_relay(self, lane_cfg: LaneConfig, pin_factory: Any) -> Relay:
        from gated.hardware.relays import make_relay

        name = f"{lane_cfg.id}-relay"

        def on_fault(relay_name: str, fault: str | None) -> None:
            assert self.auditor is not None
            self.health.set(relay_name, fault is None, fault or "")
            self.auditor.emit(
                "relay_fault" if fault else "relay_recovered",
                "relay",
                resource_id=relay_name,
                status="failure" if fault else "success",
                error_message=fault,
            )
            # The lane of whichever generation runs now (a relay can outlive a reload).
            lane = self.generation.lanes.get(lane_cfg.id) if self.generation else None
            if fault is None and lane is not None:
                self._background(lane.relay_recovered(), f"re-hold {lane_cfg.id}")

        return make_relay(name, lane_cfg.relay, pin_factory=pin_factory, on_fault=on_fault)

    def _background(self, coro: Any, what: str) -> None:
        """Run a fire-and-forget coroutine whose failure is logged and audited, never lost."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                err = t.exception()
                log.error("%s failed: %s", what, err)
                if self.auditor is not None:
                    self.auditor.emit(
                        "background_failure",
                        "daemon",
                        status="failure",
                        error_message=f"{what}: {err}",
                    )

        task.add_done_callback(done)

    def _emit(self, read: PlateRead) -> asyncio.Future[int | None]:
        """Route a read from any source to its lane; the future of the row that keeps it."""
        gen = self.generation
        lane = gen.lanes.get(read.access_point) if gen else None
        if lane is None:
            log.warning("read for unknown lane %r from %s dropped", read.access_point, read.source)
            dropped: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            dropped.set_result(None)
            return dropped
        return lane.on_read(read)

    def _build_sources(self, cfg: Config, gen: Generation) -> None:
        from gated.hardware import readers

        listeners: dict[int, Any] = {}
        frigate: list[tuple[FrigateSourceConfig, str]] = []
        for lane_cfg in cfg.lanes:
            for src in lane_cfg.sources:
                if isinstance(src, AnprHttpSourceConfig):
                    port = src.port if src.port is not None else cfg.cameras_listener.port
                    if port not in listeners:
                        from gated.hardware.anpr_http import AnprListener

                        listeners[port] = AnprListener(
                            cfg.cameras_listener.host,
                            port,
                            cfg.cameras_listener.max_body_kb,
                            settings=cfg.cameras_listener,
                            on_refused=self._on_camera_refused,
                        )
                    listeners[port].add_camera(src, lane_cfg.id)
                elif isinstance(src, FrigateSourceConfig):
                    frigate.append((src, lane_cfg.id))
                elif isinstance(src, SerialLineSourceConfig):
                    gen.services.append(
                        _source(readers.SerialLineReader(src, lane_cfg.id), self._emit)
                    )
                elif isinstance(src, Rdm6300SourceConfig):
                    gen.services.append(
                        _source(readers.Rdm6300Reader(src, lane_cfg.id), self._emit)
                    )
                elif isinstance(src, SimulatorSourceConfig):
                    gen.services.append(
                        _source(readers.SimulatorSource(src, lane_cfg.id), self._emit)
                    )
        for listener in listeners.values():
            gen.listeners.append(listener)
            gen.services.append(_source(listener, self._emit))
        if frigate:
            from gated.hardware.frigate import FrigateSource

            assert cfg.mqtt is not None
            source = FrigateSource(
                cfg.mqtt,
                frigate,
                client_id=cfg.mqtt.client_id or f"gated-{cfg.site.device_id}",
                # Not critical: a broker outage blinds Frigate's lanes, not the daemon.
                on_link_state=lambda up, detail: self.health.set("mqtt-frigate", up, detail),
            )
            gen.mqtt_links["frigate"] = source.stats
            gen.services.append(_source(source, self._emit))

    def _on_camera_refused(self, summary: RefusalSummary) -> None:
        """Audit refused camera pushes: one row per client address and interval, not per push.

        `summary` is a gated.hardware.anpr_limits.RefusalSummary; a flood of wrong
        credentials costs one journal row a minute instead of one fsynced row each.
        """
        assert self.auditor is not None
        reasons = ", ".join(f"{r} ({n})" for r, n in sorted(summary.reasons.items()))
        cameras = sorted(summary.cameras)
        self.auditor.emit(
            "camera_push_refused",
            "camera",
            resource_id=",".join(cameras[:4]) or None,
            actor_type="camera",
            ip_address=summary.address,
            status="failure",
            error_message=f"{summary.count} refused: {reasons}"[:240],
            metadata={
                "count": summary.count,
                "first_at": summary.first_at,
                "last_at": summary.last_at,
                "reasons": dict(summary.reasons),
                "cameras": {c: summary.cameras[c] for c in cameras[:16]},
                "locked_out": summary.locked_out,
            },
        )

    def _build_inputs(self, cfg: Config, gen: Generation, pin_factory: Any) -> None:
        wired = [
            lane
            for lane in cfg.lanes
            if lane.sensors.closed_pin is not None or lane.sensors.presence_pin is not None
        ]
        if not cfg.buttons and not wired:
            return
        from gated.hardware.inputs import GateSensors, GuardButton

        for button in cfg.buttons:
            source = GuardButton(button, pin_factory=pin_factory)
            gen.services.append((f"button-{button.name}", _bind(source.run, self._on_input)))
        for lane in wired:
            sensors = GateSensors(lane.id, lane.sensors, pin_factory=pin_factory)
            gen.services.append((f"{lane.id}-sensors", _bind(sensors.run, self._on_input)))

    def _on_input(self, event: InputEvent) -> None:
        """A debounced button press or sensor edge."""
        gen = self.generation
        if gen is None:
            return
        lane_id, sep, _ = event.input.partition(":")
        if sep and lane_id in gen.lanes:
            gen.lanes[lane_id].on_sensor(event)
            if event.input.endswith(":presence"):  # a loop detector triggers recognition
                for camera in gen.recognising:
                    if camera.lane_id == lane_id:
                        camera.on_presence(event.kind == "active", event.at_mono)
            return
        for button in gen.cfg.buttons:
            if button.name == event.input:
                wanted = "long_press" if button.long_press_s > 0 else "press"
                if event.kind == wanted:
                    self._background(self._button(button, gen), f"button {button.name}")
                return

    async def _button(self, button: ButtonConfig, gen: Generation) -> None:
        """A guard button is a front end of the control plane (actor: the button)."""
        assert self.control is not None
        actor = Actor(ActorType.GUARD_BUTTON, id=button.name)
        targets = [gen.lanes[i] for i in button.lanes] if button.lanes else list(gen.lanes.values())
        for lane in targets:
            await _BUTTON_ACTIONS[button.action](self.control, actor, lane)

    async def _index_rules(self, cfg: Config, gen: Generation) -> RuleIndex:
        """Build the plate index in a worker thread; decisions keep using the old one meanwhile."""
        from gated.rules.index import RuleIndex
        from gated.rules.store import RuleStore

        def build() -> RuleIndex:
            # sqlite3 connections belong to one thread: the worker reads through its own.
            with RuleStore(cfg.rules.path) as worker_store:
                return RuleIndex.build(
                    worker_store,
                    deny_depth=cfg.policy.deny_fuzzy_distance,
                    resident_depth=cfg.policy.resident_fuzzy_distance,
                )

        index = await asyncio.to_thread(build)
        # Residents' cars are decided from facts read with the index (one version);
        # passes, tags and deny entries are read at decision time through the event
        # loop's own connection, and the policy re-checks each such candidate's stored
        # plate, so rows changed by a newer version before the swap never grant access.
        index.source = gen.store
        return index

    async def _watch_rules(self, gen: Generation) -> None:
        """Pick up a new rule-set version (a CLI import, later a downlink) without a restart."""
        from gated.rules.index import release_free_memory

        assert gen.rules is not None and gen.store is not None
        while True:
            await asyncio.sleep(RULES_POLL_S)
            try:
                version = gen.store.version
                if version == gen.rules.current.version:
                    continue
                index = await self._index_rules(gen.cfg, gen)
            except Exception as err:
                self.health.set("rules", False, str(err))
                log.error("could not load rule-set version: %s", err)
                continue
            if not self._install_index(gen, index):
                continue
            log.info("rule set version %d loaded", index.version)
            # The old index (tens of MB at a large site) is garbage now: give it back.
            await asyncio.to_thread(release_free_memory)

    async def _prune_policy_state(self) -> None:
        """Forget passages older than the anti-passback reset: memory must not grow with uptime."""
        while True:
            await asyncio.sleep(self.state_prune_s)
            forgotten = self.state.prune(time.time() - self.cfg.policy.anti_passback_reset_s)
            if forgotten:
                log.debug("forgot %d anti-passback passages", forgotten)

    async def _keep_snapshot_quota(self, snapshots: SnapshotStore) -> None:
        """Keep snapshots under their disk quota: synced events' pictures go first."""
        await self._journal_ready.wait()  # a start on a full disk opens it later
        assert self.auditor is not None
        while True:
            await asyncio.sleep(self.snapshot_quota_check_s)
            removed = await asyncio.to_thread(self._enforce_quota, snapshots)
            for gone in removed:
                # An unsynced event's picture is evidence nobody else has: say so loudly.
                self.auditor.emit(
                    "snapshot_removed",
                    "snapshot",
                    resource_id=gone.event_id,
                    status="success" if gone.synced else "failure",
                    error_message=None if gone.synced else "over quota: unsynced evidence removed",
                    metadata={
                        "path": gone.relative_path,
                        "bytes": gone.size,
                        "synced": gone.synced,
                    },
                )
            if removed:
                log.warning("snapshot quota: removed %d picture(s)", len(removed))

    async def _checkpoint_wal(self) -> None:
        """Checkpoint and truncate the WAL periodically, so it never stays large on the card."""
        while True:
            await asyncio.sleep(self.cfg.journal.wal_checkpoint_s)
            busy, frames, copied = await self.journal.checkpoint("TRUNCATE")
            if busy:
                # A reader holds an older snapshot: copy what it allows; the WAL is cut back
                # to wal_limit_mb at the first checkpoint after that reader lets go.
                busy, frames, copied = await self.journal.checkpoint("PASSIVE")
                log.debug("WAL checkpoint postponed by a reader (%d of %d frames copied)",
                          copied, frames)

    async def _keep_retention(self, snapshots: SnapshotStore) -> None:
        """Purge acknowledged rows and pictures past their age ([retention])."""
        await self._journal_ready.wait()  # a start on a full disk opens it later
        from gated.journal.lifecycle import DAY_S, Retention, RetentionPolicy

        r = self.cfg.retention
        retention = Retention(self.journal, snapshots, RetentionPolicy(
            r.access_days * DAY_S, r.audit_days * DAY_S, r.snapshot_days * DAY_S,
            r.require_synced))
        while True:
            # An unsynchronised clock restricts the pass to acknowledged rows (see Retention).
            done = await retention.run_once(time.time(), self.clock.unsynced())
            if done.rows or done.snapshots:
                log.info("retention: %d row(s) through seq %d and %d picture(s) purged",
                         done.rows, done.through_seq, done.snapshots)
            if done.snapshots:
                # Rows carry their own journal_pruned record; expired pictures get one.
                await self._audit_system("snapshots_expired", "snapshot", metadata={
                    "count": done.snapshots, "bytes": done.snapshot_bytes,
                    "older_than_days": r.snapshot_days})
            await asyncio.sleep(r.interval_s)

    async def _forget_unknown_plates(self, snapshots: SnapshotStore) -> None:
        """Erase plates that matched nobody after [privacy] unknown_plate_hash_after_h."""
        await self._journal_ready.wait()  # a start on a full disk opens it later
        from gated.journal.privacy import ACTION, UnknownPlates

        p = self.cfg.privacy
        auditor = self.auditor
        assert auditor is not None

        def build(metadata: dict[str, object]) -> AuditEvent:
            return auditor.build(ACTION, "access_event", metadata=metadata)

        forget = UnknownPlates(self.journal, snapshots, build,
                               after_s=p.unknown_plate_hash_after_h * 3600.0,
                               pictures=p.unknown_plate_pictures)
        while True:
            # Ages on the time base when the clock jumped; nothing while it cannot be right.
            now = self.clock.estimated_now()
            if now is not None:
                await forget.run_once(now)
            await asyncio.sleep(p.interval_s)

    async def _keep_state_quota(self, snapshots: SnapshotStore) -> None:
        """Keep the state folders under [retention] state_quota_mb; alarm when it cannot."""
        await self._journal_ready.wait()  # a start on a full disk opens it later
        from gated.journal.lifecycle import StateQuota

        r = self.cfg.retention
        pictures = self.sync.pictures if self.sync is not None else None
        quota = StateQuota(self.journal, snapshots, r.state_quota_mb * 1024 * 1024,
                           owed=pictures.is_owed if pictures is not None else None)
        while True:
            done = await quota.enforce(time.time(), self.clock.unsynced())
            self.state_usage = (done.used_after, done.quota_bytes)
            if done.snapshots or done.rows:
                log.warning("state quota: freed %d picture(s) and %d row(s) of acknowledged "
                            "events (%d -> %d bytes)", done.snapshots, done.rows,
                            done.used_before, done.used_after)
                await self._audit_system("state_quota_freed", "journal", metadata={
                    "snapshots": done.snapshots, "snapshot_bytes": done.snapshot_bytes,
                    "rows": done.rows, "used_before": done.used_before,
                    "used_after": done.used_after, "quota": done.quota_bytes})
            if done.exhausted != self._quota_exhausted:
                self._quota_exhausted = done.exhausted
                detail = (f"{done.used_after} of {done.quota_bytes} bytes used and nothing "
                          "acknowledged left to free: events journaled without pictures"
                          if done.exhausted else "")
                snapshots.refuse_reason = "state quota exhausted" if done.exhausted else None
                self.health.set("state-quota", not done.exhausted, detail)
                if done.exhausted:
                    log.error("state quota exhausted: %s", detail)
                await self._audit_system(
                    "state_quota_exhausted" if done.exhausted else "state_quota_recovered",
                    "journal", status="failure" if done.exhausted else "success",
                    error_message=detail or None,
                    metadata={"used": done.used_after, "quota": done.quota_bytes})
            elif done.exhausted:
                snapshots.refuse_reason = "state quota exhausted"  # a new generation's store
            await asyncio.sleep(r.quota_interval_s)

    async def _audit_system(self, action: str, resource_type: str, **fields: Any) -> None:
        """Audit a housekeeping outcome; a failed write is logged, the task carries on."""
        assert self.auditor is not None
        try:
            await self.auditor.record(action, resource_type, **fields)
        except GatedError as err:
            log.error("could not journal %s: %s", action, err)

    def _enforce_quota(self, snapshots: SnapshotStore) -> list[RemovedSnapshot]:
        """One quota pass (worker thread) asking the journal which events were synced."""
        import sqlite3

        conn = sqlite3.connect(f"file:{self.cfg.journal.path}?mode=ro", uri=True)
        query = "SELECT synced_at IS NOT NULL FROM access_logs WHERE event_id = ?"
        # A picture still owed to the service (its event went "pending") counts as unsynced:
        # the quota must not delete the only copy before the upload it is waiting for.
        pictures = self.sync.pictures if self.sync is not None else None

        def synced(event_id: str) -> bool:
            if pictures is not None and pictures.is_owed(event_id):
                return False
            return bool((conn.execute(query, (event_id,)).fetchone() or (0,))[0])

        try:
            return snapshots.enforce(synced)
        finally:
            conn.close()

    def metrics_text(self) -> str:
        """Prometheus exposition of the running lanes and component health."""
        from gated.metrics import render_prometheus

        lanes = (
            {lane_id: lane.metrics for lane_id, lane in self.generation.lanes.items()}
            if self.generation
            else {}
        )
        components = {name: c.ok for name, c in self.health.components.items()}
        links = dict(self.generation.mqtt_links) if self.generation else {}
        if self.home_assistant is not None:  # long-lived, outside the generations
            links["home-assistant"] = self.home_assistant.link.stats
        return (render_prometheus(lanes, components, links) + _head_metrics(self.journal_head)
                + _state_metrics(self.state_usage, self._quota_exhausted)
                + _hold_metrics(self.hold) + _recognition_metrics(self.generation))

    async def _write_metrics(self, gen: Generation) -> None:
        """Rewrite the metrics textfile atomically every interval (node_exporter reads it)."""
        from pathlib import Path

        from gated.file_modes import open_private
        from gated.state_dirs import prepare_dir

        target = Path(gen.cfg.metrics.textfile)
        while True:
            text = self.metrics_text()
            tmp = target.with_name(f".{target.name}.tmp")
            # No fsync: the file is rebuilt every interval and belongs on a tmpfs (/run).
            prepare_dir(target.parent, "the metrics textfile")  # 0750 whatever the umask
            with os.fdopen(open_private(tmp), "w", encoding="utf-8") as out:  # 0640
                out.write(text)
            tmp.replace(target)
            await asyncio.sleep(gen.cfg.metrics.interval_s)

    def _on_event(self, event: AccessEvent, decision: Decision | None) -> None:
        for listener in list(self.event_listeners):
            listener(event, decision)


def _recognition_metrics(gen: Generation | None) -> str:
    """Frames seen, recognised and dropped by each camera gated reads plates from."""
    if gen is None or not gen.recognising:
        return ""
    from gated.hardware.recognition_source import render_metrics

    return render_metrics(gen.recognising)


def _state_metrics(usage: tuple[int, int] | None, exhausted: bool) -> str:
    """The state folders' disk use against their quota (empty when no quota is set)."""
    if usage is None:
        return ""
    used, quota = usage
    return (
        "# HELP gated_state_bytes Bytes the journal and snapshot folders use.\n"
        "# TYPE gated_state_bytes gauge\n"
        f"gated_state_bytes {used}\n"
        "# HELP gated_state_quota_bytes The state folders' disk quota.\n"
        "# TYPE gated_state_quota_bytes gauge\n"
        f"gated_state_quota_bytes {quota}\n"
        "# HELP gated_state_quota_exhausted 1 while over quota with nothing left to free.\n"
        "# TYPE gated_state_quota_exhausted gauge\n"
        f"gated_state_quota_exhausted {int(exhausted)}\n"
    )


def _hold_metrics(hold: JournalHold | None) -> str:
    """Events the disk refused: held in memory now, dropped by the bound, written later."""
    if hold is None:
        return ""
    return (
        "# HELP gated_journal_held_events Events held in memory because the disk refused them.\n"
        "# TYPE gated_journal_held_events gauge\n"
        f"gated_journal_held_events {hold.held}\n"
        "# HELP gated_journal_held_dropped_total Held events dropped by hold_max_events.\n"
        "# TYPE gated_journal_held_dropped_total counter\n"
        f"gated_journal_held_dropped_total {hold.dropped_total}\n"
        "# HELP gated_journal_held_written_total Held events written once the disk took them.\n"
        "# TYPE gated_journal_held_written_total counter\n"
        f"gated_journal_held_written_total {hold.written_total}\n"
    )


def _head_metrics(head: tuple[int, str, float] | None) -> str:
    """The chain head as last read by the periodic head task (empty before the first read)."""
    if head is None:
        return ""
    seq, digest, at = head
    return (
        "# HELP gated_journal_head_seq Sequence number of the journal chain head.\n"
        "# TYPE gated_journal_head_seq gauge\n"
        f"gated_journal_head_seq {seq}\n"
        "# HELP gated_journal_head_info The chain head as an anchor (seq and row_hash).\n"
        "# TYPE gated_journal_head_info gauge\n"
        f'gated_journal_head_info{{seq="{seq}",row_hash="{digest}"}} 1\n'
        "# HELP gated_journal_head_read_timestamp_seconds When the head was read (wall clock).\n"
        "# TYPE gated_journal_head_read_timestamp_seconds gauge\n"
        f"gated_journal_head_read_timestamp_seconds {at:.3f}\n"
    )


# What each configured button action does to one lane; the toggles ask the lane's mode.
_BUTTON_ACTIONS: dict[str, Callable[[ControlPlane, Actor, Lane], Awaitable[Any]]] = {
    "open": lambda control, actor, lane: control.open(actor, lane.id),
    "hold_open": lambda control, actor, lane: (
        control.release(actor, lane.id)
        if lane.mode == Mode.HOLD_OPEN
        else control.hold(actor, lane.id)
    ),
    "lockdown": lambda control, actor, lane: control.lockdown(
        actor, lane.mode != Mode.LOCKDOWN, lane.id
    ),
}


async def _hold_when_open(lane: Lane) -> None:
    """Energise a hold-open lane's relay as soon as its board is open, then return."""
    # Polled: the Relay protocol reports faults, not a first open, so there is no event
    # to wait on; this runs only for a hold-open lane, once per generation.
    while lane.parts.relay.fault is not None:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    with contextlib.suppress(GatedError):  # lost again: on_fault's recovery re-holds
        await lane.relay_recovered()


def _source(source: PlateSource, emit: Emit) -> tuple[str, Callable[[], Any]]:
    return source.name, _bind(source.run, emit)


def _bind(run: Callable[[Any], Any], arg: Any) -> Callable[[], Any]:
    def start() -> Any:
        return run(arg)

    return start


def _pin_factory(name: str) -> Any:
    """A gpiozero pin factory by config name; None lets gpiozero choose."""
    from gated.hardware.relays import make_pin_factory

    try:
        return make_pin_factory(name)
    except Exception as err:
        raise ConfigError(
            f"gpio.pin_factory: {name!r} is not usable on this machine: {err}"
        ) from err


class WebPassDesk:
    """Visitor passes from the status page: `gated pass`'s change-set path, audited."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    async def issue(self, actor: Actor, *, plate: str, host: str, valid_from: float,
                    valid_until: float, uses: int | None, name: str) -> dict[str, Any]:
        """Add a pass as one rule-set version, decided on from the next read; audited."""
        from gated.rules.passes import add_pass, new_pass_id
        from gated.rules.store import RuleStore

        pass_id = new_pass_id(time.time())

        def work() -> tuple[int, dict[str, Any]]:
            with RuleStore(self._daemon.cfg.rules.path) as store:
                return add_pass(store, pass_id=pass_id, plate=plate, host=host,
                                valid_from=valid_from, valid_until=valid_until, name=name,
                                lanes=None, uses=uses, actor=actor.id or "guard",
                                source="status page pass add")

        version, values = await asyncio.to_thread(work)
        await self._audit("pass_add", actor, pass_id, values)
        await self._daemon.index_now(version)
        return {"pass_id": pass_id, "rules_version": version}

    async def revoke(self, actor: Actor, pass_id: str) -> dict[str, Any]:
        """Remove a pass as one rule-set version (LookupError when there is none)."""
        from gated.rules.passes import revoke_pass
        from gated.rules.store import RuleStore

        def work() -> int:
            with RuleStore(self._daemon.cfg.rules.path) as store:
                return revoke_pass(store, pass_id, actor=actor.id or "guard",
                                   source="status page pass revoke")

        version = await asyncio.to_thread(work)
        await self._audit("pass_revoke", actor, pass_id, {"rules_version": version})
        await self._daemon.index_now(version)
        return {"pass_id": pass_id, "rules_version": version}

    async def list(self) -> list[dict[str, Any]]:
        """Passes valid now or later."""
        from gated.rules.entities import VisitorPass
        from gated.rules.store import RuleStore

        def work() -> list[dict[str, Any]]:
            now = time.time()
            with RuleStore(self._daemon.cfg.rules.path) as store:
                passes = [p for p in store.entities("visitor_passes", raw=False)
                          if isinstance(p, VisitorPass) and p.valid_until >= now]
            return [{"id": p.id, "plate": p.plate, "visitor_name": p.visitor_name,
                     "host_resident_id": p.host_resident_id, "valid_until": p.valid_until,
                     "max_uses": p.max_uses} for p in passes]

        return await asyncio.to_thread(work)

    async def _audit(self, action: str, actor: Actor, pass_id: str,
                     values: dict[str, Any]) -> None:
        auditor = self._daemon.auditor
        assert auditor is not None
        await auditor.record(action, "visitor_pass", resource_id=pass_id,
                             **actor.audit_fields(), new_values=values)


class WebRuleDesk:
    """Admin edits of the rule set from the status page: `gated rules import`'s path.

    Each save is one merged JSON document imported as one change set (a removal as the
    delta's delete), so every check of an import applies and the change set names the
    admin; audited as `rules_edit` with the admin's identity, and indexed at once so the
    next read is decided on it. Refused when the central service owns the rule set (sync
    with trusted service keys: its bundles would overwrite local edits).
    """

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def owner(self) -> str | None:
        """Who else owns the rule set, or None when local edits are allowed."""
        sync = self._daemon.cfg.sync
        if sync.enabled and sync.service_public_keys:
            return "the central service (signed rule bundles)"
        return None

    async def deny_list(self) -> list[dict[str, Any]]:
        """Every deny-list entry."""
        from gated.rules.entities import DenyEntry
        from gated.rules.store import RuleStore

        def work() -> list[dict[str, Any]]:
            with RuleStore(self._daemon.cfg.rules.path) as store:
                return [{"id": e.id, "plate": e.plate, "reason": e.reason, "until": e.until}
                        for e in store.entities("deny_list", raw=False)
                        if isinstance(e, DenyEntry)]

        return await asyncio.to_thread(work)

    async def deny_add(self, actor: Actor, *, plate: str, reason: str) -> dict[str, Any]:
        """Add a deny-list entry (one rule-set version)."""
        import secrets

        entry_id = f"d-web-{secrets.token_hex(4)}"
        doc = {"deny_list": [{"id": entry_id, "plate": plate, "reason": reason}]}
        result = await self._import(actor, doc, {}, "deny_list")
        return {"id": entry_id, **result}

    async def deny_remove(self, actor: Actor, entry_id: str) -> dict[str, Any]:
        """Remove a deny-list entry (LookupError when there is none)."""
        if await self.entry("deny_list", entry_id) is None:
            raise LookupError(f"no deny-list entry {entry_id!r}")
        return await self._import(actor, {}, {"deny_list": [entry_id]}, "deny_list")

    async def entries(self, kind: str, query: str, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` entries of a kind (as an export writes them) containing `query`."""
        from gated.rules.files import record
        from gated.rules.store import RuleStore

        zone = zoneinfo.ZoneInfo(self._daemon.cfg.site.timezone)
        needle = query.casefold()
        # "kk11ll" finds the plate typed "KK-11-LL": compare without separators too
        squashed = "".join(c for c in needle if c.isalnum())

        def matches(value: Any) -> bool:
            text = str(value).casefold()
            return needle in text or bool(
                squashed and squashed in "".join(c for c in text if c.isalnum()))

        def work() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            with RuleStore(self._daemon.cfg.rules.path) as store:
                for entity in store.entities(kind, raw=True):
                    row = record(kind, entity, zone, text=True)
                    if not needle or any(matches(v) for v in row.values()):
                        out.append(row)
                        if len(out) >= limit:
                            break
            return out

        return await asyncio.to_thread(work)

    async def entry(self, kind: str, entry_id: str) -> dict[str, Any] | None:
        """One entry of a kind as an export writes it, or None."""
        from gated.rules.files import record
        from gated.rules.store import RuleStore

        zone = zoneinfo.ZoneInfo(self._daemon.cfg.site.timezone)

        def work() -> dict[str, Any] | None:
            with RuleStore(self._daemon.cfg.rules.path) as store:
                # Plates and tags come back normalised, which imports the same.
                entity = store.get(kind, entry_id)
                return None if entity is None else record(kind, entity, zone, text=True)

        return await asyncio.to_thread(work)

    async def save(self, actor: Actor, document: Mapping[str, list[dict[str, Any]]],
                   resource: str) -> dict[str, Any]:
        """Add or update entries (merged by id) as one rule-set version; InvalidRulesError."""
        return await self._import(actor, document, {}, resource)

    async def remove(self, actor: Actor, kind: str, entry_id: str) -> dict[str, Any]:
        """Delete one entry as one rule-set version (LookupError when there is none)."""
        if await self.entry(kind, entry_id) is None:
            raise LookupError(f"no {kind} entry {entry_id!r}")
        return await self._import(actor, {}, {kind: [entry_id]}, f"{kind}/{entry_id}")

    async def _import(self, actor: Actor, document: Mapping[str, Any],
                      deletes: Mapping[str, list[str]], resource: str) -> dict[str, Any]:
        import json

        cfg = self._daemon.cfg
        data = json.dumps({"format": "gated-rules", "format_version": 1, **document}).encode()
        result = await import_change_set(cfg.rules.path, cfg.site.timezone, data, merge=True,
                                         deletes=deletes, actor=f"web:{actor.id}",
                                         label="status-page")
        auditor = self._daemon.auditor
        assert auditor is not None
        await auditor.record(
            "rules_edit", "rules", resource_id=resource[:128], **actor.audit_fields(),
            new_values={"rules_version": result["rules_version"],
                        "written": result["written"], "deleted": result["deleted"]})
        await self._daemon.index_now(int(result["rules_version"]))
        return {"rules_version": result["rules_version"]}

    def names(self, resident_id: str | None, pass_id: str | None) -> dict[str, str]:
        """Names for an event page from the rule index the lanes decide with (read-only)."""
        gen = self._daemon.generation
        index = gen.rules.current if gen is not None and gen.rules is not None else None
        source = index.source if index is not None else None
        out: dict[str, str] = {}
        if index is None or source is None:
            return out
        with contextlib.suppress(Exception):  # a row the store no longer has: no name
            if resident_id:
                resident = index.resident(resident_id)
                if resident is not None and resident.name:
                    out["resident"] = resident.name
            get = getattr(source, "get", None)
            if pass_id and get is not None:
                visitor_pass = get("visitor_passes", pass_id)
                if visitor_pass is not None:
                    if visitor_pass.visitor_name:
                        out["pass_holder"] = visitor_pass.visitor_name
                    host = index.resident(visitor_pass.host_resident_id)
                    if host is not None and host.name:
                        out["host"] = host.name
        return out


def rule_bundle_importer(
    rules_path: str, tz: str
) -> Callable[[bytes, bool, Mapping[str, list[str]], str], Awaitable[dict[str, Any]]]:
    """The downlink's way into the rule store: `gated rules import`'s change-set path.

    A bundle's document is imported as one change set (a delta merged, its deletes in the
    same transaction) by import_change_set, as the status page's rule edits are.
    """

    async def apply(document: bytes, delta: bool, deletes: Mapping[str, list[str]],
                    label: str) -> dict[str, Any]:
        return await import_change_set(rules_path, tz, document, merge=delta,
                                       deletes=deletes, actor="service", label=label)

    return apply


async def import_change_set(rules_path: str, tz: str, document: bytes, *, merge: bool,
                            deletes: Mapping[str, list[str]], actor: str,
                            label: str) -> dict[str, Any]:
    """Import a JSON rule document as one change set, on a worker thread.

    The worker opens its own RuleStore connection (sqlite3 connections belong to one
    thread), so the event loop keeps deciding on the last committed version meanwhile.
    """

    def work() -> dict[str, Any]:
        from gated.rules.files import import_document
        from gated.rules.store import RuleStore

        with RuleStore(rules_path) as store:
            result = import_document(store, document, name=label, merge=merge,
                                     deletes=deletes, actor=actor, tz=tz)
        return {"rules_version": result.version, "counts": result.counts,
                "written": result.written, "deleted": result.deleted,
                "sha256": result.sha256}

    return await asyncio.to_thread(work)


def run_daemon(cfg: Config, *, config_path: str | None = None) -> int:
    """Run the daemon in a fresh event loop; the process exit status.

    Bounded from the moment stopping begins: whatever still runs STOP_DEADLINE_S later
    (a thread stuck on a dying disk, a port that never answers) the process ends with a
    non-zero status, well inside systemd's TimeoutStopSec, instead of hanging.
    """
    deadline = _ExitDeadline(STOP_DEADLINE_S)
    daemon = Daemon(cfg, config_path=config_path)
    daemon.on_stopping = deadline.arm
    try:
        status = asyncio.run(daemon.run())
    except GatedError as err:
        print(f"gated: {err}", file=sys.stderr)
        status = 1
    finally:
        deadline.arm()  # also covers interpreter shutdown after the loop
    _exit_if_threads_linger(status)
    return status


class _ExitDeadline:
    """A daemon thread that ends the process if a stop outlives its deadline."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        """Start counting (only the first call counts)."""
        if self._timer is None:
            self._timer = threading.Timer(self.seconds, self._expired)
            self._timer.daemon = True
            self._timer.start()

    def _expired(self) -> None:
        with contextlib.suppress(Exception):
            log.critical("stop did not finish within %g s: exiting", self.seconds)
            logging.shutdown()
        os._exit(1)


def _exit_if_threads_linger(status: int) -> None:
    """End the process now if a non-daemon thread would keep the interpreter alive."""
    lingering = [
        t.name
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    if not lingering:
        return
    log.critical("threads still running at exit (%s): exiting anyway", ", ".join(lingering))
    logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)
