# -*- coding: utf-8 -*-
"""500 concurrent associations through the association gate, with a reload in the middle.

The gateway is rendered by the role's templates and its worker_limits task (gate_lab.render_gateway,
so the connection limits are the role's defaults, not Debian's 768) in front of a
pynetdicom SCP that holds associations where the test says, so that the moment of the
reload is chosen by what is established, not by a clock:

- wave 1, 300 associations started together: the first 200 to reach the SCP are accepted and
  held inside their C-ECHO (established, data flowing through an old worker); the next 100
  are held before the SCP answers their A-ASSOCIATE-RQ (the gate has let them through, the
  association is still being set up);
- when all 300 are held, the nginx master gets SIGHUP by its PID; the new configuration holds
  a user the old one did not know;
- wave 2, 200 more associations, starts right after the signal, while the old workers still
  hold wave 1 and the new ones are starting: they meet the listen queue during the reload;
- once wave 2 is through, wave 1 is let go.

Every association carries a type 2 identity that the gate verifies (PBKDF2), so each one
passes the whole gate: preread, identity check, js_filter stripping the identity. All 500
must end accepted with the C-ECHO answered, and the old workers must have served their
connections after the reload and then exited.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import resource
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from gate_lab import ROLE, Nginx, free_port, make_root, read_decisions, render_gateway, skip_without_nginx, wait_for

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_probe

CALLED = "LOADPACS"
CALLING = "CT01"
USER, PASSCODE = "ct01load", "Load-Passcode-ct01-9Hs"  # synthetic
LATE_USER, LATE_PASSCODE = "ct01late", "Load-Passcode-late-2Vd"  # only in the reloaded policy
ESTABLISHED, IN_SETUP, AFTER_RELOAD = 200, 100, 200
TOTAL = ESTABLISHED + IN_SETUP + AFTER_RELOAD
# Generous: a probe's deadline must outlast the holds (wave 1 waits for all of wave 2) on a
# two-core machine loaded by other work; no assertion is made on any duration.
PROBE_TIMEOUT = 150


class HoldingScp:
    """A pynetdicom Verification SCP that numbers associations as their A-ASSOCIATE-RQ
    arrives and holds them where the test needs them until ``release`` is set."""

    def __init__(self):
        from pynetdicom import AE, evt
        from pynetdicom.transport import AssociationServer
        from pynetdicom.sop_class import Verification

        self.release = threading.Event()
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        self.held_in_echo = 0
        self.held_in_setup = 0
        self.echoes_after_reload = 0
        self.associations = 0
        ae = AE(ae_title=CALLED)
        ae.maximum_associations = TOTAL + 50
        ae.network_timeout = PROBE_TIMEOUT + 10
        ae.acse_timeout = PROBE_TIMEOUT + 10
        ae.dimse_timeout = PROBE_TIMEOUT + 10
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_CONN_OPEN, self._opened), (evt.EVT_REQUESTED, self._requested),
                    (evt.EVT_C_ECHO, self._echo)]
        # socketserver listens with a backlog of 5: 500 connects from nginx at once would
        # meet SYN retransmission, not the gateway.
        saved = AssociationServer.request_queue_size
        AssociationServer.request_queue_size = 1024
        try:
            self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        finally:
            AssociationServer.request_queue_size = saved
        self.port = self.server.server_address[1]

    @staticmethod
    def _opened(event):
        # Each association's DUL thread polls its socket every millisecond by default; 500 of
        # them spent more CPU polling than the whole rest of the test and starved nginx. At
        # 50 ms a PDU waits at most that long, which no assertion here depends on.
        event.assoc.dul._run_loop_delay = 0.05  # pylint: disable=protected-access

    def _requested(self, event):
        with self._lock:
            number = next(self._numbers)
            self.associations += 1
        event.assoc.load_number = number
        if ESTABLISHED <= number < ESTABLISHED + IN_SETUP:
            with self._lock:
                self.held_in_setup += 1
            self.release.wait(PROBE_TIMEOUT)

    def _echo(self, event):
        number = getattr(event.assoc, "load_number", TOTAL)
        if number < ESTABLISHED:
            with self._lock:
                self.held_in_echo += 1
            self.release.wait(PROBE_TIMEOUT)
        elif number >= ESTABLISHED + IN_SETUP:
            with self._lock:
                self.echoes_after_reload += 1
        return 0x0000

    def stop(self):
        self.release.set()
        self.server.shutdown()


def _role_vars(root, port, upstream_port, late_user):
    users = [{"name": USER, "passcode": PASSCODE, "calling_aes": [CALLING]}]
    if late_user:
        users.append({"name": LATE_USER, "passcode": LATE_PASSCODE, "calling_aes": [CALLING]})
    return {
        "nginx_stream_proxy_listeners": [{
            "name": "load", "port": port, "addresses": ["127.0.0.1"], "called_aes": [CALLED],
            "calling_aes": [CALLING], "identity": {"types": ["username_passcode"]},
            "upstream": {"host": "127.0.0.1", "port": upstream_port},
            "timeouts": {"preread": 20, "connect": 20, "idle": PROBE_TIMEOUT + 10},
            # Every association comes from 127.0.0.1; the default of 16 would refuse most.
            "max_connections_per_source": TOTAL + 50,
        }],
        "nginx_stream_proxy_modalities": [{"ae": CALLING, "sources": ["127.0.0.1/32"]}],
        "nginx_stream_proxy_users": users,
        # The role's minimum: 500 derivations at the default 100,000 would be the test's runtime.
        "nginx_stream_proxy_pbkdf2_iterations": 10000,
        "nginx_stream_proxy_gate_dir": str(root / "gate"),
        "nginx_stream_proxy_run_dir": str(root / "run"),
        "nginx_stream_proxy_log_file": str(root / "decisions.log"),
        "nginx_stream_proxy_syslog": {},
    }


class LoadGateway:
    def __init__(self, root, port, scp, nginx):
        self.root = root
        self.port = port
        self.scp = scp
        self.nginx = nginx


@pytest.fixture(scope="module")
def descriptors():
    """This process holds both ends' sockets (the engine's 500 and the SCP's 500): raise the
    soft open-file limit within the hard one for the module, and put it back after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3 * TOTAL + 512
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip("needs an open-file limit of %d, the hard limit is %d" % (wanted, hard))
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def load_gateway(descriptors):
    skip_without_nginx()
    root = make_root()
    scp = nginx = None
    port = free_port()
    try:
        scp = HoldingScp()
        render_gateway(root, _role_vars(root, port, scp.port, late_user=False))
        (root / "run").chmod(0o755)
        nginx = Nginx(root).start([port])
        yield LoadGateway(root, port, scp, nginx)
    finally:
        if nginx is not None:
            nginx.stop()
        if scp is not None:
            scp.stop()
        shutil.rmtree(root, ignore_errors=True)


def _role_default(name):
    import yaml

    return yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())[name]


def _open_files_limit(pid):
    for line in Path("/proc/%d/limits" % pid).read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files limit for pid %d" % pid)


def test_the_workers_run_with_the_roles_limits_not_debians(load_gateway):
    """What lets 500 associations through: the role's task replaced Debian's 768 in events {},
    and each worker raised its descriptor limit above systemd's 1,024."""
    connections = _role_default("nginx_stream_proxy_worker_connections")
    nofile = _role_default("nginx_stream_proxy_worker_rlimit_nofile")
    conf = (load_gateway.root / "nginx.conf").read_text()
    assert "\tworker_connections %d;\n" % connections in conf
    assert "worker_connections 768" not in conf
    workers = load_gateway.nginx.worker_pids()
    assert workers
    assert [_open_files_limit(pid) for pid in workers] == [nofile] * len(workers)


def _request(port, user=USER, passcode=PASSCODE):
    return {"host": "127.0.0.1", "port": port, "called_ae": CALLED, "calling_ae": CALLING,
            "timeout": PROBE_TIMEOUT, "dimse": "echo",
            "identity": {"type": "username_passcode", "username": user, "passcode": passcode}}


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_500_concurrent_associations_survive_a_reload_in_the_middle(load_gateway):
    gw = load_gateway
    scp = gw.scp
    # The policy is rewritten on disk before the load; nginx sees it only at the reload.
    before = dicom_probe.probe(_request(gw.port, LATE_USER, LATE_PASSCODE))
    assert before["outcome"] == "rejected" and (before["reject"]["source"], before["reject"]["reason"]) == (2, 1), \
        dicom_probe.outcome_message(before)
    render_gateway(gw.root, _role_vars(gw.root, gw.port, scp.port, late_user=True))
    old_workers = gw.nginx.worker_pids()
    assert old_workers
    seen = {}

    def conduct(loop, after_reload):
        # Everything here waits on counts of what is established, never on a clock; the
        # moments are kept only to explain a failure.
        start = time.monotonic()
        seen["wave1_held"] = wait_for(lambda: scp.held_in_echo == ESTABLISHED and scp.held_in_setup == IN_SETUP,
                                      timeout=PROBE_TIMEOUT - 10)
        seen["moments"] = {"wave1_held": time.monotonic() - start}
        os.kill(gw.nginx.proc.pid, signal.SIGHUP)
        loop.call_soon_threadsafe(after_reload.set)
        seen["new_workers"] = wait_for(lambda: len(set(gw.nginx.worker_pids()) - set(old_workers)) >= 2,
                                       timeout=PROBE_TIMEOUT - 10)
        seen["moments"]["new_workers"] = time.monotonic() - start
        seen["wave2_done"] = wait_for(lambda: scp.echoes_after_reload == AFTER_RELOAD, timeout=PROBE_TIMEOUT - 10)
        seen["moments"]["wave2_done"] = time.monotonic() - start
        # The old workers must still be there, holding wave 1, when it is let go.
        seen["old_alive_at_release"] = [pid for pid in old_workers if _alive(pid)]
        scp.release.set()

    async def load():
        loop = asyncio.get_running_loop()
        after_reload = asyncio.Event()
        # The collection's engine, one runner for all 500: its concurrency limit admits them
        # all at once; wave 2 only waits for the signal before it connects.
        runner = dicom_probe.Runner(concurrency=TOTAL)
        assert runner.limit == TOTAL, "the open-file limit caps the engine below %d" % TOTAL
        conductor = threading.Thread(target=conduct, args=(loop, after_reload), daemon=True)
        conductor.start()

        async def after(req):
            await after_reload.wait()
            return await runner.probe(req)

        first = [runner.probe(_request(gw.port)) for _number in range(ESTABLISHED + IN_SETUP)]
        second = [after(_request(gw.port)) for _number in range(AFTER_RELOAD)]
        try:
            return await asyncio.gather(*first, *second)
        finally:
            scp.release.set()
            await loop.run_in_executor(None, conductor.join, 10)

    results = dicom_probe.run(load())

    failures = [dicom_probe.outcome_message(r) for r in results if dicom_probe.expectation_error(r, "accepted")]
    assert not failures, "%d of %d associations failed (moments %s), e.g. %s" % (
        len(failures), TOTAL, seen.get("moments"), failures[:3])
    assert len(results) == TOTAL
    assert seen.get("wave1_held"), "wave 1 was never fully held: %d established, %d in setup" % (
        scp.held_in_echo, scp.held_in_setup)
    assert seen.get("new_workers"), "no new workers after SIGHUP: %s" % gw.nginx.error_log()[-2000:]
    assert seen.get("wave2_done"), "wave 2 did not complete while wave 1 was held"
    assert scp.associations == TOTAL, "the SCP saw %d associations for %d probes" % (scp.associations, TOTAL)
    # Graceful: the old workers outlived the reload with wave 1 in their hands, then exited.
    assert sorted(seen["old_alive_at_release"]) == sorted(old_workers)
    assert wait_for(lambda: not any(_alive(pid) for pid in old_workers), timeout=20), "old workers did not exit"
    assert len(gw.nginx.worker_pids()) == 2
    log = gw.nginx.error_log()
    assert "reconfiguring" in log and "gracefully shutting down" in log
    for trouble in ("[emerg]", "[alert]", "[crit]", "worker_connections are not enough", "limiting connections"):
        assert trouble not in log, log[-3000:]
    decisions = wait_for(lambda: [d for d in read_decisions(gw.root / "decisions.log") if d["user"] == USER]
                         if len(read_decisions(gw.root / "decisions.log")) >= TOTAL + 1 else None)
    assert decisions and len(decisions) == TOTAL
    assert {(d["verdict"], d["reason"], d["status"]) for d in decisions} == {("accept", "authorized", 200)}

    # The reloaded policy is the one in force: the new user gets in, a wrong passcode does not.
    after_user = dicom_probe.probe(_request(gw.port, LATE_USER, LATE_PASSCODE))
    assert dicom_probe.expectation_error(after_user, "accepted") is None, dicom_probe.outcome_message(after_user)
    wrong = dicom_probe.probe(_request(gw.port, USER, PASSCODE + "x"))
    assert wrong["outcome"] == "rejected" and (wrong["reject"]["source"], wrong["reject"]["reason"]) == (2, 1), \
        dicom_probe.outcome_message(wrong)
