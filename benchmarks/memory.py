"""Peak-memory measurement for the benchmarks: a function runs in a fresh process (Linux /proc)."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any, Callable


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def measure_peak(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fn()`` and return its result and the rise of peak resident memory during it, in MB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    before = _status_kb("VmRSS")
    result = fn()
    return result, (_status_kb("VmHWM") - before) / 1024


def _child(target: Callable[..., Any], args: tuple, queue: Any) -> None:
    queue.put(target(*args))


def in_fresh_process(target: Callable[..., Any], *args: Any) -> Any:
    """``target(*args)`` in a spawned process (a module-level function), so memory starts clean."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_child, args=(target, args, queue))
    p.start()
    result = queue.get()
    p.join()
    return result
