# -*- coding: utf-8 -*-
# Copyright: contributors to the dicomsec.hardening collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small single-threaded scheduler for the association engine.

Tasks are generators.  A task suspends by yielding one of three commands built here:
``wait_io(sock, events)`` (resume when the socket is readable or writable), ``sleep(seconds)``
and ``gather(jobs)`` (run other tasks, resume with their return values in order).  A
``Job`` is a task with a deadline that counts against the concurrency limit: when its
deadline passes, ``DeadlineExceeded`` is thrown into it at the point where it waits.  A
job is expected to catch it and return (a job that lets it escape ends with None), and a
job may not gather: only root tasks do, so a slot is never held by a task that waits
for other slots.

Why not asyncio: importing asyncio costs about 30 ms (it pulls in ssl, logging,
concurrent.futures and more), which is a fifth of a whole 200-endpoint audit, and its
futures, handles and tasks cost more CPU per association than the association's own
bytes.  A probe only ever waits for one socket at a time, so selectors and generators
carry the whole engine.
"""

from __future__ import annotations

__metaclass__ = type

import heapq
import itertools
import selectors
import time
from collections import deque

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

_IO, _SLEEP, _GATHER = 1, 2, 3


class DeadlineExceeded(Exception):
    """Thrown into a job whose deadline has passed."""


class Job:
    """A task generator that runs under the concurrency limit with ``timeout`` seconds."""

    __slots__ = ("gen", "timeout")

    def __init__(self, gen, timeout):
        self.gen = gen
        self.timeout = timeout


def wait_io(sock, events):
    return (_IO, sock, events)


def sleep(seconds):
    return (_SLEEP, seconds)


def gather(jobs):
    return (_GATHER, jobs)


class _Task:
    __slots__ = ("gen", "parent", "index", "timeout", "fileobj", "events", "waiting", "queued",
                 "throw", "token", "results", "pending", "done")

    def __init__(self, gen, parent=None, index=0, timeout=None):
        self.gen = gen
        self.parent = parent
        self.index = index
        self.timeout = timeout
        self.fileobj = None  # the socket this task is registered for, if any
        self.events = 0
        self.waiting = False  # suspended on I/O or a sleep
        self.queued = False  # in the ready queue
        self.throw = None  # an exception to throw in at the next step
        self.token = 0  # invalidates sleep timers of earlier waits
        self.results = None
        self.pending = 0
        self.done = False


# Descriptors left to the interpreter, its imports and TLS files when the concurrency is
# capped by the process's open-file limit.
FD_RESERVE = 64


def usable_concurrency(wanted):
    """``wanted``, lowered so that every job's socket fits under the open-file limit.

    Past the limit socket() fails with EMFILE, and a probe would report a healthy
    endpoint as unreachable.
    """
    wanted = max(1, int(wanted))
    try:
        import resource  # pylint: disable=import-outside-toplevel  # not on every platform

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))


class Loop:
    """Runs root tasks to completion; jobs they gather share ``concurrency`` slots."""

    def __init__(self, concurrency=32):
        self.limit = usable_concurrency(concurrency)
        self.selector = selectors.DefaultSelector()
        self.ready = deque()
        self.slots_wanted = deque()
        self.active = 0
        self.timers = []
        self.seq = itertools.count()
        self.roots_left = 0
        self.results = []
        self.live = set()

    def run(self, roots):
        """Run the generators in ``roots`` concurrently; return their return values in order."""
        self.results = [None] * len(roots)
        self.roots_left = len(roots)
        tasks = [_Task(gen, index=i) for i, gen in enumerate(roots)]
        for task in tasks:
            self.live.add(task)
            self._schedule(task)
        try:
            while self.roots_left:
                while self.ready:
                    task = self.ready.popleft()
                    task.queued = False
                    self._step(task)
                if not self.roots_left:
                    break
                self._poll()
        finally:
            try:
                self._close_all()
            finally:
                self.selector.close()
        return self.results

    # -- stepping --------------------------------------------------------------------------

    def _schedule(self, task, value=None):
        if task.done or task.queued:
            return
        task.waiting = False
        task.queued = True
        task.results = value if value is not None else task.results
        self.ready.append(task)

    def _step(self, task):
        throw, task.throw = task.throw, None
        try:
            if throw is not None:
                command = task.gen.throw(throw)
            else:
                value, task.results = task.results, None
                command = task.gen.send(value)
        except StopIteration as stop:
            self._finish(task, stop.value)
            return
        except DeadlineExceeded:
            if task.parent is None:
                raise
            self._finish(task, None)
            return
        # Every suspension gets a new token: a timer from an earlier wait cannot wake this one.
        task.token += 1
        kind = command[0]
        if kind == _IO:
            self._wait_io(task, command[1], command[2])
        elif kind == _SLEEP:
            self._forget_io(task)
            task.waiting = True
            heapq.heappush(self.timers, (time.monotonic() + command[1], next(self.seq), task, task.token))
        elif kind == _GATHER:
            self._forget_io(task)
            if task.parent is not None:
                raise RuntimeError("a job may not gather other jobs; only root tasks do")
            jobs = list(command[1])
            if not jobs:
                self._schedule(task, [])
                return
            task.results = [None] * len(jobs)
            task.pending = len(jobs)
            for index, job in enumerate(jobs):
                child = _Task(job.gen, parent=task, index=index, timeout=job.timeout)
                self.live.add(child)
                if self.active < self.limit:
                    self._start(child)
                else:
                    self.slots_wanted.append(child)
        else:  # pragma: no cover - a programming error in a task
            raise RuntimeError("unknown scheduler command %r" % (command,))

    def _start(self, job):
        self.active += 1
        if job.timeout is not None:
            heapq.heappush(self.timers, (time.monotonic() + job.timeout, next(self.seq), job, None))
        self._schedule(job)

    def _finish(self, task, value):
        task.done = True
        self.live.discard(task)
        self._forget_io(task)
        if task.parent is None:
            self.results[task.index] = value
            self.roots_left -= 1
            return
        self.active -= 1
        while self.slots_wanted and self.active < self.limit:
            self._start(self.slots_wanted.popleft())
        parent = task.parent
        parent.results[task.index] = value
        parent.pending -= 1
        if parent.pending == 0:
            results, parent.results = parent.results, None
            self._schedule(parent, results)

    # -- waiting ---------------------------------------------------------------------------

    def _wait_io(self, task, sock, events):
        # A registration is kept while the task keeps waiting on the same socket object
        # (one epoll_ctl per connection instead of two per wait).  A closed socket's file
        # descriptor number can come back for the next socket, so identity decides.
        try:
            if task.fileobj is not sock:
                self._forget_io(task)
                self.selector.register(sock, events, task)
                task.fileobj = sock
                task.events = events
            elif task.events != events:
                self.selector.modify(sock, events, task)
                task.events = events
        except (OSError, ValueError, KeyError) as exc:
            # A closed socket or a descriptor the selector cannot take: the task hears of it.
            task.fileobj = None
            task.throw = exc
            self._schedule(task)
            return
        task.waiting = True

    def _forget_io(self, task):
        if task.fileobj is not None:
            try:
                self.selector.unregister(task.fileobj)
            except (KeyError, ValueError, OSError):
                pass
            task.fileobj = None
            task.events = 0

    def _poll(self):
        timeout = None
        if self.timers:
            timeout = max(0.0, self.timers[0][0] - time.monotonic())
        elif not self.selector.get_map():
            raise RuntimeError("every task waits and nothing can wake one")  # pragma: no cover
        for key, mask in self.selector.select(timeout):
            task = key.data
            if task.waiting and mask & task.events:
                self._schedule(task)
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            dummy, dummy_seq, task, token = heapq.heappop(self.timers)
            if task.done:
                continue
            if token is None:  # a job's deadline
                task.throw = DeadlineExceeded()
                self._schedule(task)
            elif token == task.token and task.waiting:
                self._schedule(task)

    def _close_all(self):
        """Close every unfinished task (after an error), so that its sockets are closed."""
        for task in list(self.live):
            task.done = True
            try:
                task.gen.close()
            except Exception:  # pylint: disable=broad-except  # one broken task must not keep others open
                pass
        self.live.clear()


def run(roots, concurrency=32):
    """Run root generators; return their results in order."""
    return Loop(concurrency).run(list(roots))


def run_jobs(jobs, concurrency=32):
    """Run jobs under one concurrency limit; return their results in order."""

    def root():
        results = yield gather(jobs)
        return results

    return run([root()], concurrency)[0]
