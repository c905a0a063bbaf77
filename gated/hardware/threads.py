"""The one seam between driver threads (pyserial, OpenCV, gpiozero, paho) and asyncio."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any


def call_in_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> bool:
    """Run fn(*args) on `loop` from another thread; False when the loop is already closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # loop closed during shutdown: nothing left to deliver to
        return False
    return True


def _settle(fut: asyncio.Future[BaseException | None], value: BaseException | None) -> None:
    if not fut.done():
        fut.set_result(value)


async def run_in_thread(
    name: str,
    work: Callable[[], None],
    stop: threading.Event,
    *,
    interrupt: Callable[[], None] | None = None,
    join_timeout_s: float = 5.0,
) -> BaseException | None:
    """Run blocking `work` on a daemon thread until it returns or we are cancelled.

    On cancellation `stop` is set and `interrupt` (e.g. cancel a blocking read)
    called, then the thread is joined without blocking the loop. Returns what
    `work` raised, or None when it returned.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[BaseException | None] = loop.create_future()

    def body() -> None:
        failure: BaseException | None = None
        try:
            work()
        except BaseException as err:  # handed to the owner, which decides what it means
            failure = err
        call_in_loop(loop, _settle, done, failure)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    try:
        return await asyncio.shield(done)
    finally:
        stop.set()
        if interrupt is not None:
            interrupt()
        await asyncio.to_thread(thread.join, join_timeout_s)
