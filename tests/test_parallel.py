import multiprocessing
import threading
import time

import pytest
import torch

from keynet import KeyNetDetector
from keynet.parallel import caller_single_threaded, run_tasks, tasks_disabled

from .conftest import read_gray


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_results_come_back_in_task_order_from_the_caller_and_a_worker(two_threads):
    barrier = threading.Barrier(2, timeout=10)

    def task(i):
        if i < 2:
            barrier.wait()  # the first two tasks only finish if they run at the same time
        return i, threading.current_thread().name, torch.get_num_threads()

    out = run_tasks([lambda i=i: task(i) for i in range(5)])
    assert [r[0] for r in out] == list(range(5))
    names = {name for _, name, _ in out[:2]}
    assert len(names) == 2 and threading.current_thread().name in names  # the caller takes tasks too
    assert all(name.startswith("keynet") or name == threading.current_thread().name for _, name, _ in out)
    assert all(threads == 1 for _, _, threads in out)  # one intra-op thread per task
    assert torch.get_num_threads() == 2  # the caller's setting is given back


def test_single_thread_runs_in_the_caller():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = run_tasks([lambda: threading.current_thread().name] * 2)
    finally:
        torch.set_num_threads(before)
    assert out == [threading.current_thread().name] * 2


def test_tasks_can_be_kept_in_the_calling_thread(two_threads):
    with tasks_disabled():
        out = run_tasks([lambda: (threading.current_thread().name, torch.get_num_threads())] * 2)
    assert out == [(threading.current_thread().name, 2)] * 2  # intra-op threads untouched


def test_nested_tasks_run_sequentially_and_modes_follow_the_caller(two_threads):
    def inner():
        return run_tasks([lambda: threading.current_thread().name] * 2)

    with torch.inference_mode():
        nested = run_tasks([inner, inner])
        modes = run_tasks([torch.is_inference_mode_enabled] * 2)
    assert all(a == b for a, b in nested)  # each inner pair ran in its worker thread
    assert modes == [True, True]
    with torch.no_grad():
        assert run_tasks([torch.is_grad_enabled] * 2) == [False, False]


def test_a_failing_task_raises_and_the_thread_count_is_restored(two_threads):
    def boom():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_tasks([lambda: torch.zeros(1), boom, lambda: torch.zeros(1)])
    assert torch.get_num_threads() == 2


def test_an_interrupt_starts_no_more_tasks(two_threads):
    class Interrupt(BaseException):  # as KeyboardInterrupt: not a task failure to run past
        pass

    caller = threading.current_thread()
    started = []

    def task():
        started.append(1)
        if threading.current_thread() is caller:
            raise Interrupt
        time.sleep(0.2)  # a worker's task, still running when the caller is interrupted

    with pytest.raises(Interrupt):
        run_tasks([task] * 6)
    assert len(started) <= 2  # at most the caller's and a worker's first: the others never start
    assert torch.get_num_threads() == 2


def test_the_caller_runs_single_threaded_around_tasks_and_gets_its_threads_back(two_threads):
    barrier = threading.Barrier(2, timeout=10)
    with caller_single_threaded():
        assert torch.get_num_threads() == 1
        assert run_tasks([barrier.wait] * 2)  # tasks still run side by side
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="boom"), caller_single_threaded():
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    with tasks_disabled(), caller_single_threaded():  # no tasks to make room for: intra-op threads stay
        assert torch.get_num_threads() == 2


def test_detection_is_the_same_on_one_and_two_threads(data_dir, reference_weights):
    image = read_gray(data_dir / "oxford_affine/graf/img1.png")
    det = KeyNetDetector(weights=reference_weights, num_keypoints=1000)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(det.detect(image)[0])
        with tasks_disabled():  # two intra-op threads instead of tasks
            results.append(det.detect(image)[0])
    finally:
        torch.set_num_threads(before)
    for key in ("keypoints", "scales", "scores"):
        assert torch.equal(results[0][key], results[1][key]), key
        torch.testing.assert_close(results[2][key], results[0][key], rtol=1e-5, atol=1e-4)


def _tasks_in_child(queue):
    torch.set_num_threads(2)  # torch may reset it in a forked child
    both_running = threading.Barrier(2, timeout=10)  # passes only if the two tasks run at once
    try:
        queue.put(run_tasks([both_running.wait] * 2))
    except threading.BrokenBarrierError:
        queue.put("tasks ran one after the other")


def test_a_forked_child_gets_working_threads(two_threads):
    run_tasks([lambda: 0, lambda: 0])  # the parent's pool exists before the fork
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_tasks_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
    assert sorted(queue.get(timeout=1)) == [0, 1]
