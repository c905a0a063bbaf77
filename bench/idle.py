"""The daemon's idle footprint: CPU and resident memory of a real `gated run` with no traffic.

Imports N vehicles (N/2 residents, P visitor passes) into a rule store the way
bench.daemon_rss does, then starts three processes side by side and samples them
over the same window, so machine noise hits all three alike:

* `gated run` on a site like the demo's without cameras (two lanes on fake relays,
  no plate sources, no camera listener, no sync, no status page) holding the N vehicles;
* the same daemon on an empty rule set;
* a bare Python idling in asyncio (`asyncio.run(asyncio.sleep(...))`), the floor.

Each daemon is sampled once it has sent READY=1 (a stand-in systemd notify socket)
and settled. CPU is the growth of utime + stime in /proc/PID/stat (every thread)
over the window; RSS is VmRSS from /proc/PID/status, sampled every second (the
median is reported, and the largest). The loaded daemon runs with `-X importtime`,
whose lines give the modules it imported, the heavy optional libraries among them
and the cumulative import time of gated.app; /proc/PID/maps says whether numpy or
OpenCV are mapped.

Bytecode: an installed gated has its .pyc files (pip compiles them); a source tree
under PYTHONDONTWRITEBYTECODE compiles every module at each start, which leaves a
few MB more on the heap. By default the processes share a bytecode cache in the
work folder, filled by one warm-up start; --no-pyc measures without one.

    python -m bench.idle [--vehicles 40000] [--passes 0] [--sample-s 30] [--no-pyc] [--dir DIR]

Last line: one JSON object. The goal (docs/operations.md, "Idle footprint"):
<= 0.5 % of a core and <= 60 MB RSS with 40,000 vehicles.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench._site import rss_mb

GOAL_RSS_MB = 60.0
GOAL_CPU_PCT = 0.5
# Optional libraries the daemon must import only when the config uses them.
HEAVY = ("numpy", "cv2", "aiohttp", "jinja2", "cryptography", "httpx", "paho", "PIL",
         "onnxruntime", "rapidocr")
TICKS = os.sysconf("SC_CLK_TCK")


def _config(base: Path) -> str:
    """Two lanes on fake relays, as the demo's, without sources or cameras."""
    return f"""
[site]
tenant_id = "bench"
site_id = "bench"
device_id = "idle"
timezone = "UTC"

[journal]
path = "{base / "journal.sqlite3"}"
snapshot_dir = "{base / "snapshots"}"

[rules]
path = "{base / "rules.sqlite3"}"

[control]
socket = "{base / "control.sock"}"

[log]
level = "warning"

[[lanes]]
id = "main-in"
name = "Main gate, entry"
direction = "in"
paired_lane = "main-out"
[lanes.relay]
kind = "fake"

[[lanes]]
id = "main-out"
name = "Main gate, exit"
direction = "out"
paired_lane = "main-in"
[lanes.relay]
kind = "fake"
"""


def _import_rules(base: Path, vehicles: int, passes: int) -> None:
    from bench.rules_import import _write_input
    from gated.rules.files import import_rules
    from gated.rules.store import RuleStore

    csv = base / "csv"
    csv.mkdir(parents=True, exist_ok=True)
    _write_input(csv, vehicles, passes)
    with RuleStore(base / "rules.sqlite3") as store:
        import_rules(store, csv)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) process `pid` has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def mapped(pid: int) -> list[str]:
    """Which of numpy and OpenCV have shared objects mapped into process `pid`."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name in ("numpy", "cv2") if f"/{name}/" in maps]


@dataclass
class Probe:
    """One process being sampled."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    rss: list[float] = field(default_factory=list)
    cpu0: float = 0.0
    cpu1: float = 0.0

    def sample(self) -> None:
        self.rss.append(rss_mb(self.proc.pid))

    def figures(self, window_s: float) -> dict[str, float]:
        return {
            "rss_mb": round(statistics.median(self.rss), 1),
            "rss_max_mb": round(max(self.rss), 1),
            "cpu_pct": round((self.cpu1 - self.cpu0) / window_s * 100, 3),
            "cpu_ms": round((self.cpu1 - self.cpu0) * 1000),  # in ticks of 1000 / TICKS ms
        }


class _Notify:
    """A stand-in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"gated exited with {proc.returncode} before READY=1")
            self.sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                if "READY=1" in self.sock.recv(65536).decode().splitlines():
                    return
        raise RuntimeError("gated never sent READY=1")

    def close(self) -> None:
        self.sock.close()


def _daemon(base: Path, env: dict[str, str], importtime: bool) -> tuple[Probe, _Notify]:
    for stale in (*base.glob("journal.sqlite3*"), base / "notify.sock"):
        stale.unlink(missing_ok=True)
    notify = _Notify(base / "notify.sock")
    env = dict(env, NOTIFY_SOCKET=str(notify.path))
    log = base / "daemon.log"
    flags = ["-X", "importtime"] if importtime else []
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *flags, "-m", "gated", "run", "--config", str(base / "gated.toml")],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    return Probe(base.name, proc, log), notify


def _imports(log: Path) -> dict[str, object]:
    """What `-X importtime` said: module count, heavy libraries, gated.app's import time."""
    names: list[str] = []
    app_us = None
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line.split("|")
        name = parts[2].strip()
        if name == "imported package":  # the header line
            continue
        names.append(name)
        if name == "gated.app":
            app_us = int(parts[1])
    tops = {n.split(".")[0] for n in names}
    return {
        "modules_loaded": len(names),
        "heavy_loaded": [h for h in HEAVY if h in tops],
        "gated_app_import_ms": round(app_us / 1000, 1) if app_us is not None else None,
    }


def _warm_up(base: Path, env: dict[str, str]) -> None:
    """Start and stop a daemon once, so every module it imports has its bytecode cached."""
    probe, notify = _daemon(base, env, importtime=False)
    try:
        notify.wait_ready(probe.proc, 120)
    finally:
        probe.proc.send_signal(signal.SIGTERM)
        probe.proc.wait(30)
        notify.close()


def run(work: Path, vehicles: int, passes: int, sample_s: float, settle_s: float,
        pyc: bool) -> dict[str, object]:
    """Measure; the figures."""
    loaded, empty = work / "loaded", work / "empty"
    for base in (loaded, empty):
        base.mkdir(parents=True, exist_ok=True)
        (base / "gated.toml").write_text(_config(base))
    t0 = time.perf_counter()
    if not (loaded / "rules.sqlite3").exists():
        _import_rules(loaded, vehicles, passes)
    import_s = time.perf_counter() - t0
    env = dict(os.environ)
    if pyc:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        _warm_up(empty, env)
    probes: list[Probe] = []
    notifies: list[_Notify] = []
    try:
        started = time.monotonic()
        daemon, notify = _daemon(loaded, env, importtime=True)
        probes.append(daemon)
        notifies.append(notify)
        notify.wait_ready(daemon.proc, 120)
        ready_s = time.monotonic() - started
        daemon_e, notify_e = _daemon(empty, env, importtime=False)
        probes.append(daemon_e)
        notifies.append(notify_e)
        notify_e.wait_ready(daemon_e.proc, 120)
        sleep_s = int(settle_s + sample_s + 60)
        with (work / "baseline.log").open("wb") as out:
            floor = subprocess.Popen(
                [sys.executable, "-c", f"import asyncio; asyncio.run(asyncio.sleep({sleep_s}))"],
                stdout=out, stderr=subprocess.STDOUT, env=env)
        probes.append(Probe("baseline", floor, work / "baseline.log"))
        time.sleep(settle_s)  # start-up passes (retention, quota, first metrics) are over
        for p in probes:
            p.cpu0 = cpu_s(p.proc.pid)
        begin = time.monotonic()
        while time.monotonic() - begin < sample_s:
            for p in probes:
                p.sample()
            time.sleep(1.0)
        for p in probes:
            p.cpu1 = cpu_s(p.proc.pid)
        window = time.monotonic() - begin
        libs = mapped(daemon.proc.pid)
        figures = [p.figures(window) for p in probes]
    finally:
        for p in probes:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in probes:
            try:
                p.proc.wait(30)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()
        for n in notifies:
            n.close()
    (loaded_f, empty_f, floor_f) = figures
    return {
        "vehicles": vehicles,
        "passes": passes,
        "rss_mb": loaded_f["rss_mb"],
        "rss_max_mb": loaded_f["rss_max_mb"],
        "cpu_pct": loaded_f["cpu_pct"],
        "cpu_ms": loaded_f["cpu_ms"],
        "rss_empty_mb": empty_f["rss_mb"],
        "cpu_empty_pct": empty_f["cpu_pct"],
        "baseline_python_rss_mb": floor_f["rss_mb"],
        "baseline_python_cpu_pct": floor_f["cpu_pct"],
        **_imports(loaded / "daemon.log"),
        "mapped": libs,
        "goal_met": loaded_f["rss_mb"] <= GOAL_RSS_MB and loaded_f["cpu_pct"] <= GOAL_CPU_PCT,
        "sample_s": round(window, 1),
        "ready_s": round(ready_s, 1),
        "bytecode": "cached" if pyc else "compiled at start",
        "import_s": round(import_s, 1),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu",
    }


def main() -> None:
    """Run the benchmark and print its JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=40_000)
    parser.add_argument("--passes", type=int, default=0)
    parser.add_argument("--sample-s", type=float, default=30.0,
                        help="sampling window (at least 20 s: CPU is counted in 10 ms ticks)")
    parser.add_argument("--settle-s", type=float, default=5.0,
                        help="wait after READY=1 before sampling")
    parser.add_argument("--no-pyc", action="store_true",
                        help="no bytecode cache: gated's modules compiled at each start")
    parser.add_argument("--dir", help="work folder; an existing loaded/rules.sqlite3 is reused")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="gated-bench-idle-"))
    print(json.dumps(run(work, args.vehicles, args.passes, args.sample_s, args.settle_s,
                         pyc=not args.no_pyc)))


if __name__ == "__main__":
    main()
