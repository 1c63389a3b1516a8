# -*- coding: utf-8 -*-
"""The engine's scheduler, on real sockets: ordering, the concurrency limit, deadlines,
and a file descriptor number that comes back for a new socket."""

from __future__ import annotations

import socket
import time

import pytest

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_loop as loop


def _read_one(sock):
    """A task that waits until ``sock`` has a byte, then returns it."""
    while True:
        try:
            return sock.recv(1)
        except BlockingIOError:
            yield loop.wait_io(sock, loop.READ)


def test_results_come_back_in_job_order_not_completion_order():
    def sleeper(delay, value):
        yield loop.sleep(delay)
        return value

    jobs = [loop.Job(sleeper(0.03 - i * 0.01, i), 5) for i in range(3)]
    assert loop.run_jobs(jobs, concurrency=3) == [0, 1, 2]


def test_concurrency_limit_is_never_exceeded():
    state = {"now": 0, "peak": 0}

    def job():
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        yield loop.sleep(0.005)
        state["now"] -= 1
        return True

    assert loop.run_jobs([loop.Job(job(), 5) for dummy in range(20)], concurrency=4) == [True] * 20
    assert state["peak"] == 4


def test_deadline_is_thrown_into_a_job_waiting_on_a_silent_socket():
    silent, other = socket.socketpair()
    talker, peer = socket.socketpair()
    for sock in (silent, talker):
        sock.setblocking(False)
    seen = []

    def waits_forever():
        try:
            yield from _read_one(silent)
        except loop.DeadlineExceeded:
            seen.append("deadline")
            return "timed out"
        return "answered"

    try:
        peer.send(b"x")
        start = time.monotonic()
        results = loop.run_jobs([loop.Job(waits_forever(), 0.2), loop.Job(_read_one(talker), 5)], concurrency=2)
        elapsed = time.monotonic() - start
    finally:
        for sock in (silent, other, talker, peer):
            sock.close()
    assert results == ["timed out", b"x"]
    assert seen == ["deadline"]
    assert 0.15 < elapsed < 5


def test_a_new_socket_on_a_reused_descriptor_number_is_waited_on():
    # Closing a socket drops it from epoll; the next socket often gets the same number.
    # A scheduler that kept the old registration would never wake this task.
    def task():
        first, first_peer = socket.socketpair()
        first.setblocking(False)
        first_peer.send(b"a")
        got = yield from _read_one(first)
        number = first.fileno()
        first.close()
        first_peer.close()
        second, second_peer = socket.socketpair()
        second.setblocking(False)
        try:
            reused = number in (second.fileno(), second_peer.fileno())
            second_peer.send(b"b")
            got += yield from _read_one(second)
        finally:
            second.close()
            second_peer.close()
        return got, reused

    (data, dummy_reused), = loop.run_jobs([loop.Job(task(), 2)], concurrency=1)
    assert data == b"ab"


def test_an_error_in_a_task_propagates_and_closes_the_others():
    closed = []
    blocker, peer = socket.socketpair()
    blocker.setblocking(False)

    def waiting():
        try:
            yield from _read_one(blocker)
        finally:
            closed.append(True)

    def failing():
        yield loop.sleep(0.01)
        raise ValueError("broken task")

    def root_wait():
        result = yield loop.gather([loop.Job(waiting(), 5)])
        return result

    try:
        with pytest.raises(ValueError, match="broken task"):
            loop.run([root_wait(), failing()])
    finally:
        blocker.close()
        peer.close()
    assert closed == [True]


def test_gather_of_nothing_resumes_at_once():
    def root():
        results = yield loop.gather([])
        return results

    assert loop.run([root()]) == [[]]


def test_a_job_that_lets_its_deadline_escape_ends_alone_with_none():
    def careless():
        yield loop.sleep(5)
        return "finished"

    def quick():
        yield loop.sleep(0.01)
        return "quick"

    assert loop.run_jobs([loop.Job(careless(), 0.05), loop.Job(quick(), 5)], concurrency=2) == [None, "quick"]


def test_an_earlier_sleep_timer_does_not_wake_a_later_socket_wait():
    silent, other = socket.socketpair()
    silent.setblocking(False)

    def job():
        try:
            yield loop.sleep(0.05)
        except loop.DeadlineExceeded:
            pass
        # Woken early by its deadline, the job now waits on a socket that stays silent;
        # the 0.05 s timer of the sleep must not resume it.
        yield loop.wait_io(silent, loop.READ)
        try:
            return silent.recv(1)
        except BlockingIOError:
            return "resumed without data"

    def root():
        results = yield loop.gather([loop.Job(job(), 0.01)])
        return results

    def closer():
        yield loop.sleep(0.3)
        other.send(b"z")

    try:
        results = loop.run([root(), closer()])
    finally:
        silent.close()
        other.close()
    assert results[0] == [b"z"]


def test_a_job_may_not_gather():
    def nested():
        yield loop.gather([])

    with pytest.raises(RuntimeError, match="may not gather"):
        loop.run_jobs([loop.Job(nested(), 1)])
