"""Independent tensor computations spread over torch's threads, one intra-op thread each.

Key.Net's layers are small (8-channel convolutions, single-channel elementwise passes, pads), and
splitting every one of them over threads pays a synchronisation per operation. The pyramid levels
and row bands of an image are independent, so they run as tasks on ``torch.get_num_threads()``
worker threads, each with a single intra-op thread (``benchmarks/speed.py`` times detection both
ways). Results are returned in task order, so what is computed does not depend on which thread
finished first. ``tasks_disabled()`` runs everything in the calling thread instead, with torch's
usual intra-op threading.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

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
    """Within this block, torch runs the calling thread's operations on one intra-op thread where
    ``run_tasks`` would spread tasks over threads; the block must not call ``run_tasks`` itself.

    For the light work before tasks (input checks, image pyramids): a parallel region would wake
    torch's OpenMP team, whose idle thread then spins for milliseconds (libgomp's default wait
    policy) on a core the tasks are about to need. Tiny-Key.Net's detection at 600x600 was about
    10% faster with it here.
    """
    threads = concurrency()
    if threads <= 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def concurrency() -> int:
    """How many tasks ``run_tasks`` runs at once in this thread now: 1 when it would run them in the
    caller (one torch thread, inside a task, while tracing, or within ``tasks_disabled()``)."""
    if torch.jit.is_tracing() or getattr(_local, "disabled", False):
        return 1
    return torch.get_num_threads()


def run_tasks(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """``[task() for task in tasks]``, run concurrently when torch may use more than one thread.

    Tasks start in the given order (put the most expensive first for a good balance). Inside a task
    ``torch.get_num_threads()`` is 1, so nested calls run sequentially. Grad and inference mode are
    those of the caller. While tracing (ONNX export) everything runs in the calling thread.
    """
    threads = concurrency()
    if threads <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    grad = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()

    def run(task: Callable[[], T]) -> T:
        torch.set_num_threads(1)
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return task()

    pool = _executor(min(threads, len(tasks)))
    futures = [pool.submit(run, task) for task in tasks]
    wait(futures)  # all of them, also when one fails, before the thread count is given back
    # A worker's set_num_threads also changes the process-wide default: give the caller its own back.
    torch.set_num_threads(threads)
    return [f.result() for f in futures]
