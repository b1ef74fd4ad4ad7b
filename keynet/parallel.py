"""Independent tensor computations spread over torch's threads, one intra-op thread each.

Key.Net's convolutions have 8 channels: oneDNN splits one such convolution over two threads poorly
(measured here: 1.1-1.3x the speed of one thread), while two of them run side by side on two threads
at nearly twice the speed, and the small elementwise operations around them do not parallelise well
at all. So the pyramid levels, which are independent, run as tasks on ``torch.get_num_threads()``
worker threads, each with a single intra-op thread. Results are returned in task order, so what is
computed does not depend on which thread finished first.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")

_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    # Keyed by process: a forked child inherits the parent's pools without their threads.
    key = (os.getpid(), workers)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keynet")
        return _pools[key]


def run_tasks(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """``[task() for task in tasks]``, run concurrently when torch may use more than one thread.

    Tasks start in the given order (put the most expensive first for a good balance). Inside a task
    ``torch.get_num_threads()`` is 1, so nested calls run sequentially. Grad and inference mode are
    those of the caller. While tracing (ONNX export) everything runs in the calling thread.
    """
    threads = torch.get_num_threads()
    if threads <= 1 or len(tasks) <= 1 or torch.jit.is_tracing():
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
