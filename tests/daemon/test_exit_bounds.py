"""The last resorts of `gated run`: nothing left running keeps the process from ending.

The full-disk tests (test_full_disk.py) show the daemon's own stop path closing what it
opened; these hold the two guards behind it, each in a child interpreter: a thread that
would keep the interpreter alive, and a stop that never finishes.
"""

from __future__ import annotations

import subprocess
import sys

BOUND_S = 30.0  # the hangs these guard against are forever; the guards act in well under 1 s


def child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=BOUND_S, check=False)


def test_a_lingering_non_daemon_thread_does_not_keep_the_process_alive() -> None:
    done = child(
        "import threading, time\n"
        "from gated.app import _exit_if_threads_linger\n"
        "threading.Thread(target=time.sleep, args=(3600,), name='stuck-reader').start()\n"
        "_exit_if_threads_linger(3)\n"
    )
    assert done.returncode == 3  # the status the daemon decided, not a hang
    assert "stuck-reader" in done.stderr


def test_a_stop_that_never_finishes_ends_with_status_1() -> None:
    done = child(
        "import time\n"
        "from gated.app import _ExitDeadline\n"
        "deadline = _ExitDeadline(0.2)\n"
        "deadline.arm()\n"
        "deadline.arm()  # a second arm does not restart the count\n"
        "time.sleep(3600)\n"
    )
    assert done.returncode == 1
    assert "did not finish" in done.stderr


def test_nothing_lingering_is_a_normal_return() -> None:
    done = child("from gated.app import _exit_if_threads_linger\n"
                 "_exit_if_threads_linger(0)\nprint('returned')\n")
    assert done.returncode == 0 and "returned" in done.stdout
