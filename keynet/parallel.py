"""Independent tensor computations spread over torch's threads, one intra-op thread each.

Key.Net's layers are small (8-channel convolutions, single-channel elementwise passes, pads), and
splitting every one of them over threads pays a synchronisation per operation. The pyramid levels
and row bands of an image are independent, so they run as tasks on ``torch.get_num_threads()``
threads (the caller and workers), each with a single intra-op thread (``benchmarks/speed.py`` times
detection both ways). Results are returned in task order, so what is computed does not depend on
which thread finished first. ``tasks_disabled()`` runs everything in the calling thread instead, with torch's
usual intra-op threading.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch

T = TypeVar("T")

_local = threading.local()  # .disabled: tasks_disabled() is active in this thread
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    # Keyed by process: a forked child inherits the parent's pools without their threads.
    key = (os.getpid(), workers)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keynet")
        return _pools[key]


@contextmanager
def tasks_disabled() -> Iterator[None]:
    """Within this block (in this thread), ``run_tasks`` runs its tasks one after the other in the
    calling thread, where torch uses its intra-op threads as usual."""
    before = getattr(_local, "disabled", False)
    _local.disabled = True
    try:
        yield
    finally:
        _local.disabled = before


@contextmanager
def caller_single_threaded() -> Iterator[None]:
    """Within this block, torch runs the calling thread's own operations on one intra-op thread,
    while ``run_tasks`` still spreads tasks over the threads torch had (nothing changes where
    ``concurrency()`` is 1).

    For the light work around tasks (input checks, merging results): a parallel region wakes
    torch's OpenMP team, whose thread may take milliseconds to wake up on a VM and then spins for
    milliseconds more (libgomp's default wait policy) on a core the tasks need.
    Tiny-Key.Net's detection at 600x600 was about 10% faster with it (2-core AMD EPYC, Zen 4).
    """
    threads = concurrency()
    if threads <= 1:
        yield
        return
    before = getattr(_local, "threads", None)
    _local.threads = threads
    torch.set_num_threads(1)
    try:
        yield
    finally:
        _local.threads = before
        torch.set_num_threads(threads)


def concurrency() -> int:
    """How many tasks ``run_tasks`` runs at once in this thread now: 1 when it would run them in the
    caller (one torch thread, inside a task, while tracing, or within ``tasks_disabled()``)."""
    if torch.jit.is_tracing() or getattr(_local, "disabled", False) or getattr(_local, "in_task", False):
        return 1
    threads = getattr(_local, "threads", None)  # set by caller_single_threaded()
    return torch.get_num_threads() if threads is None else threads


def run_tasks(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """``[task() for task in tasks]``, run concurrently when torch may use more than one thread.

    Tasks start in the given order (put the most expensive first for a good balance), taken by the
    calling thread and ``concurrency() - 1`` workers as each becomes free. The caller works too:
    its core is awake, while a worker's first task started up to 5 ms late on this project's VMs.
    Inside a task ``torch.get_num_threads()`` is 1 and nested calls run sequentially. Grad and
    inference mode are those of the caller. While tracing (ONNX export) everything runs in the
    calling thread. If tasks fail, the others still run, and the first failure in task order is
    raised.
    """
    threads = concurrency()
    if threads <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    grad = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()
    caller_threads = torch.get_num_threads()
    results: list[Any] = [None] * len(tasks)
    errors: list[Exception | None] = [None] * len(tasks)
    lock = threading.Lock()
    pending = iter(range(len(tasks)))

    def work() -> None:
        torch.set_num_threads(1)
        _local.in_task = True
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                while True:
                    with lock:
                        i = next(pending, None)
                    if i is None:
                        return
                    try:
                        results[i] = tasks[i]()
                    except Exception as e:  # noqa: BLE001 - raised below, after the other tasks
                        errors[i] = e
        finally:
            _local.in_task = False

    workers = min(threads, len(tasks)) - 1
    helpers = [_executor(workers).submit(work) for _ in range(workers)]
    try:
        work()
    finally:
        with lock:  # if the caller was interrupted, start no more tasks
            for _ in pending:
                pass
        wait(helpers)
        # set_num_threads in a task also changes the process-wide default: give the caller its own back.
        torch.set_num_threads(caller_threads)
    for e in errors:
        if e is not None:
            raise e
    return results
