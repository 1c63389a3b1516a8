# -*- coding: utf-8 -*-
"""dicom_audit's exposure checks (storage, C-GET, C-MOVE destination, a plain listener beside
TLS, vendor default AE titles) against real servers that hold and fail each, and the audit
against servers that degrade on purpose: an answer that overload can produce is never read
as a pass."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from dicom_lab import LOOPBACK, USERS, LoopListeners, ScpPolicy, free_port, handshake_never_completes, run_module

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_audit as da

PASSCODE_IDENTITY = dict(type="username_passcode", username="ct01", passcode=USERS["ct01"])
BACKOFF = 0.2


def audit(endpoints, **config):
    config = dict(dict(endpoints=endpoints, timeout=2, concurrency=32, retry_backoff=BACKOFF), **config)
    assert da.validate(config) == []
    reports, summary = da.audit(config)
    return {r["name"]: {f["id"]: f for f in r["findings"]} for r in reports}, reports, summary


def endpoint(name, port, called_ae="ANY-SCP", **extra):
    return dict(name=name, host=LOOPBACK, port=port, called_ae=called_ae, **extra)


# --- storage_exposure -----------------------------------------------------------------------


def test_storage_exposure_fails_when_an_unknown_caller_is_offered_storage(scp_factory):
    server = scp_factory(ScpPolicy.OPEN)
    findings, reports, _s = audit([endpoint("open", server)], checks=["storage_exposure"])
    finding = findings["open"]["storage_exposure"]
    assert finding["verdict"] == "fail" and finding["passed"] is False
    # The lab SCP supports Secondary Capture only, and nothing was stored.
    assert "accepted SC;" in finding["evidence"] and "nothing was stored" in finding["evidence"]
    assert reports[0]["associations"] == 1


def test_storage_exposure_passes_when_unknown_callers_are_rejected(scp_factory):
    server = scp_factory(ScpPolicy.CALLING_WHITELIST)
    findings, reports, _s = audit([endpoint("wl", server)], checks=["storage_exposure"])
    finding = findings["wl"]["storage_exposure"]
    assert finding["verdict"] == "pass"
    assert "calling-ae-not-recognized" in finding["evidence"]
    # The first association (random called AE) was rejected, so the offer was made again
    # on the real called AE.
    assert reports[0]["associations"] == 2


def test_storage_exposure_passes_when_no_storage_context_is_accepted(tls_scp_factory, pki):
    # A Verification-only SCP accepts the association, and none of the storage contexts.
    port = tls_scp_factory(require_client_cert=False)
    findings, _r, _s = audit([endpoint("echo-only", port, tls=True)], checks=["storage_exposure"], tls=pki.client_tls())
    finding = findings["echo-only"]["storage_exposure"]
    assert finding["verdict"] == "pass"
    assert "none of the 9 storage contexts" in finding["evidence"]


def test_packaged_orthanc_accepts_storage_from_any_caller(orthanc_open):
    findings, _r, _s = audit([endpoint("orthanc", orthanc_open, "ORTHANC")], checks=["storage_exposure", "cfind_exposure"])
    storage = findings["orthanc"]["storage_exposure"]
    assert storage["verdict"] == "fail"
    assert "CT, MR" in storage["evidence"]
    # What the audit missed before: the C-FIND of the same unknown caller is refused.
    assert findings["orthanc"]["cfind_exposure"]["verdict"] == "pass"


def test_hardened_orthanc_offers_no_storage_to_unknown_callers(orthanc_hardened):
    findings, _r, _s = audit([endpoint("orthanc", orthanc_hardened, "ORTHANC")], calling_ae="CT01",
                             checks=["storage_exposure", "cget_exposure"])
    assert findings["orthanc"]["storage_exposure"]["verdict"] == "pass"
    assert "calling-ae-not-recognized" in findings["orthanc"]["storage_exposure"]["evidence"]
    assert findings["orthanc"]["cget_exposure"]["verdict"] == "pass"


# --- cget_exposure ----------------------------------------------------------------------------


def test_cget_exposure_fails_when_an_unknown_caller_may_retrieve(scp_factory):
    findings, _r, _s = audit([endpoint("open", scp_factory(ScpPolicy.OPEN))], checks=["cget_exposure"])
    finding = findings["open"]["cget_exposure"]
    assert finding["verdict"] == "fail"
    assert "C-GET success (status 0x0000)" in finding["evidence"]


def test_cget_exposure_passes_when_unknown_callers_are_rejected(scp_factory):
    findings, _r, _s = audit([endpoint("wl", scp_factory(ScpPolicy.CALLING_WHITELIST))], checks=["cget_exposure"])
    assert findings["wl"]["cget_exposure"]["verdict"] == "pass"


def test_packaged_orthanc_refuses_an_unknown_callers_c_get_after_accepting_its_context(orthanc_open):
    findings, reports, _s = audit([endpoint("orthanc", orthanc_open, "ORTHANC")], checks=["cfind_exposure", "cget_exposure"])
    finding = findings["orthanc"]["cget_exposure"]
    assert finding["verdict"] == "pass"
    assert "C-GET aborted" in finding["evidence"]
    # Orthanc aborts the C-FIND, so the C-GET behind it had an association of its own.
    assert reports[0]["associations"] == 2


# --- move_destination_unchecked ---------------------------------------------------------------


def test_move_destination_unchecked_passes_when_unknown_destinations_are_refused(scp_factory):
    findings, _r, _s = audit([endpoint("checked", scp_factory(ScpPolicy.OPEN))], calling_ae="CT01",
                             checks=["move_destination_unchecked"])
    finding = findings["checked"]["move_destination_unchecked"]
    assert finding["verdict"] == "pass"
    assert "move destination unknown (status 0xa801)" in finding["evidence"]


def test_move_destination_unchecked_fails_when_any_destination_gets_success(scp_factory):
    findings, _r, _s = audit([endpoint("any", scp_factory(ScpPolicy.MOVE_ANY_DESTINATION))], calling_ae="CT01",
                             checks=["move_destination_unchecked"])
    finding = findings["any"]["move_destination_unchecked"]
    assert finding["verdict"] == "fail"
    assert "C-MOVE success (status 0x0000) with 0 completed sub-operations" in finding["evidence"]


def test_move_destination_unchecked_passes_when_the_caller_may_not_move_at_all(scp_factory):
    findings, _r, _s = audit([endpoint("wl", scp_factory(ScpPolicy.CALLING_WHITELIST))], calling_ae="NOTLISTED",
                             checks=["move_destination_unchecked"])
    finding = findings["wl"]["move_destination_unchecked"]
    assert finding["verdict"] == "pass"
    assert "cannot ask for a C-MOVE" in finding["evidence"]


def test_orthanc_refuses_a_move_to_an_unregistered_destination_and_passes(orthanc_open):
    # Orthanc 1.10 answers 0xC000 (and logs an unknown modality) rather than 0xA801: a refusal
    # of the check's own request, which passes; the evidence says the reason was not given.
    findings, _r, summary = audit([endpoint("orthanc", orthanc_open, "ORTHANC")], calling_ae="CT01",
                                  checks=["move_destination_unchecked"])
    finding = findings["orthanc"]["move_destination_unchecked"]
    assert finding["verdict"] == "pass" and finding["passed"] is True
    assert "0xc000" in finding["evidence"] and "without saying whether" in finding["evidence"]
    assert summary["inconclusive_checks"] == []


# --- plain_beside_tls ---------------------------------------------------------------------------


def test_plain_beside_tls_fails_when_a_plain_listener_answers_on_the_same_host(scp_factory, tls_scp_factory, pki):
    tls_port = tls_scp_factory()
    plain_port = scp_factory(ScpPolicy.CALLING_WHITELIST)
    findings, reports, _s = audit([endpoint("tls", tls_port, tls=True)], calling_ae="CT01", tls=pki.client_tls(),
                                  checks=["plain_beside_tls"], plain_ports=[free_port(), plain_port])
    finding = findings["tls"]["plain_beside_tls"]
    assert finding["verdict"] == "fail"
    assert "plain DICOM answers on port %d" % plain_port in finding["evidence"]
    # Even a listener that rejects the caller is a plain listener.
    findings, _r, _s = audit([endpoint("tls", tls_port, tls=True)], calling_ae="NOTLISTED", tls=pki.client_tls(),
                             checks=["plain_beside_tls"], plain_ports=[plain_port])
    assert findings["tls"]["plain_beside_tls"]["verdict"] == "fail"
    assert "calling-ae-not-recognized" in findings["tls"]["plain_beside_tls"]["evidence"]


def test_plain_beside_tls_passes_when_only_tls_and_closed_ports_answer(tls_scp_factory, pki):
    tls_port = tls_scp_factory()
    other_tls_port = tls_scp_factory()
    findings, _r, _s = audit([endpoint("tls", tls_port, tls=True)], calling_ae="CT01", tls=pki.client_tls(),
                             checks=["plain_beside_tls"], plain_ports=[free_port(), other_tls_port, tls_port])
    finding = findings["tls"]["plain_beside_tls"]
    assert finding["verdict"] == "pass", finding
    assert str(tls_port) not in finding["evidence"].split("(")[0]  # its own port is plaintext_accepted's


def test_plain_beside_tls_is_skipped_on_plain_endpoints_and_not_run_by_default(scp_factory):
    port = scp_factory(ScpPolicy.OPEN)
    _f, reports, _s = audit([endpoint("open", port)], checks=["plain_beside_tls"])
    assert reports[0]["skipped"] == [{"id": "plain_beside_tls", "reason": "endpoint is not marked tls"}]
    assert "plain_beside_tls" not in da.DEFAULT_CHECKS and "vendor_default_ae" not in da.DEFAULT_CHECKS
    assert {"storage_exposure", "cget_exposure", "move_destination_unchecked"} <= set(da.DEFAULT_CHECKS)


# --- vendor_default_ae --------------------------------------------------------------------------


def test_vendor_default_ae_fails_when_a_default_calling_title_is_whitelisted(scp_factory):
    port = scp_factory(ScpPolicy.OPEN, calling_aes=["CT01", "STORESCU"])
    findings, _r, _s = audit([endpoint("wl", port)], calling_ae="CT01", checks=["any_ae", "vendor_default_ae"])
    assert findings["wl"]["any_ae"]["verdict"] == "pass"
    finding = findings["wl"]["vendor_default_ae"]
    assert finding["verdict"] == "fail"
    assert finding["evidence"].startswith("accepted vendor default calling AE titles: STORESCU (called ANY-SCP)")


def test_vendor_default_ae_passes_when_only_the_sites_own_titles_get_in(scp_factory):
    port = scp_factory(ScpPolicy.CALLING_WHITELIST)
    findings, reports, _s = audit([endpoint("wl", port)], calling_ae="CT01", checks=["vendor_default_ae"])
    finding = findings["wl"]["vendor_default_ae"]
    assert finding["verdict"] == "pass"
    assert "calling-ae-not-recognized" in finding["evidence"]
    # The first association, then one per shipped calling title.
    assert reports[0]["associations"] == 1 + len(da.vendor.titles("calling"))


def test_vendor_default_ae_tries_the_titles_a_user_adds(scp_factory):
    port = scp_factory(ScpPolicy.OPEN, calling_aes=["CT01", "SITEPACS"])
    without, _r, _s = audit([endpoint("wl", port)], calling_ae="CT01", checks=["vendor_default_ae"])
    assert without["wl"]["vendor_default_ae"]["verdict"] == "pass"
    extended, _r, _s = audit([endpoint("wl", port)], calling_ae="CT01", checks=["vendor_default_ae"],
                             vendor_ae_titles=["SITEPACS"])
    assert extended["wl"]["vendor_default_ae"]["verdict"] == "fail"
    assert "SITEPACS" in extended["wl"]["vendor_default_ae"]["evidence"]


def test_vendor_default_ae_fails_without_guessing_when_any_calling_ae_gets_in(orthanc_open):
    findings, reports, _s = audit([endpoint("orthanc", orthanc_open, "ORTHANC")], checks=["vendor_default_ae"])
    finding = findings["orthanc"]["vendor_default_ae"]
    assert finding["verdict"] == "fail"
    assert "even the random calling AE" in finding["evidence"]
    assert reports[0]["associations"] == 1


def test_hardened_orthanc_lets_no_vendor_default_in(orthanc_hardened):
    findings, _r, _s = audit([endpoint("orthanc", orthanc_hardened, "ORTHANC")], calling_ae="CT01",
                             checks=["vendor_default_ae"])
    assert findings["orthanc"]["vendor_default_ae"]["verdict"] == "pass"


# --- a server that degrades on purpose ----------------------------------------------------------


class DegradingProxy(LoopListeners):
    """A TCP front for a real pynetdicom SCP that misbehaves on a schedule, one listener per
    schedule, all on one asyncio loop in a thread.

    Each schedule maps the connection's number (from 0) to what the front does with it:
    ``pass`` (forward both ways), ``reset`` (read the request, send an RST, no PDU),
    ``slow`` (accept, then wait longer than any probe's timeout before forwarding),
    ``silent`` (accept and read, never answer), ``cut`` (forward until the server's first PDU
    has gone back, then drop everything the server says: the operation is never answered).
    """

    def __init__(self, backend_port, schedules):
        super().__init__()
        self.backend_port = backend_port
        self.ports = {}
        self.counts = {}
        self.actions = {}
        for name, schedule in schedules.items():
            self.counts[name] = 0
            self.actions[name] = []
            self.ports[name] = self.listen(lambda r, w, name=name, schedule=schedule: self._handle(name, schedule, r, w))

    async def _handle(self, name, schedule, reader, writer):
        index = self.counts[name]
        self.counts[name] += 1
        action = schedule(index)
        self.actions[name].append(action)
        upstream = None
        try:
            if action == "reset":
                await reader.read(6)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if action == "silent":
                await reader.read(65536)
                await asyncio.sleep(30)
                return
            if action == "slow":
                await asyncio.sleep(5)
            up_reader, upstream = await asyncio.open_connection(LOOPBACK, self.backend_port)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer, cut=action == "cut"))
        except (ConnectionError, asyncio.CancelledError, OSError):
            pass
        finally:
            for stream in (writer, upstream):
                if stream is not None and not stream.transport.is_closing():
                    stream.close()

    @staticmethod
    async def _pipe(reader, writer, cut=False):
        head = b""
        limit = None  # with cut: bytes of the server's first PDU, the only ones let through
        forwarded = 0
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if cut:
                if limit is None:
                    head += data
                    if len(head) >= 6:
                        limit = 6 + struct.unpack(">I", head[2:6])[0]
                if limit is not None:
                    data = data[:max(0, limit - forwarded)]
                if not data:
                    continue
            writer.write(data)
            await writer.drain()
            forwarded += len(data)
        if not writer.transport.is_closing():
            writer.close()


# What each check must say about the open pynetdicom SCP behind every front: it lets
# anyone in and answers everything, except that it refuses a C-MOVE to an unknown
# destination (0xA801) and sends no identity response to a passcode.
OPEN_SCP_TRUTH = dict(
    any_ae="fail", called_ae_guess="fail", no_identity="fail", wrong_passcode="fail", identity_ignored="fail",
    cfind_exposure="fail", storage_exposure="fail", cget_exposure="fail", vendor_default_ae="fail",
    move_destination_unchecked="pass", authorized="pass",
)

SCHEDULES = {
    # Every other connection reset before any PDU.
    "resets_half": lambda i: "reset" if i % 2 == 0 else "pass",
    # Accepts slowly: every third connection waits out the probe's timeout.
    "accepts_slowly": lambda i: "slow" if i % 3 == 1 else "pass",
    # Answers the first two associations, then stops answering altogether.
    "stops_halfway": lambda i: "pass" if i < 2 else "silent",
    # Accepts every association and never answers what is asked on it.
    "cuts_operations": lambda i: "cut",
    # A mix: reset, answer, fall silent, answer, cut.
    "mixed": lambda i: ("reset", "pass", "silent", "pass", "cut")[i % 5],
    # Resets everything: nothing can be audited.
    "resets_all": lambda i: "reset",
}


@pytest.fixture(scope="module")
def degrading(scp_factory):
    proxy = DegradingProxy(scp_factory(ScpPolicy.OPEN), SCHEDULES)
    yield proxy
    proxy.stop()


def test_a_degrading_server_never_gets_a_false_pass(degrading):
    checks = list(OPEN_SCP_TRUTH)
    endpoints = [endpoint(name, port) for name, port in degrading.ports.items()]
    findings, reports, summary = audit(endpoints, timeout=1, calling_ae="CT01", identity=PASSCODE_IDENTITY, checks=checks)
    false_passes = []
    false_fails = []
    for name, per_endpoint in findings.items():
        for check_id, finding in per_endpoint.items():
            truth = OPEN_SCP_TRUTH.get(check_id, "fail")  # reachable: never a pass either
            if finding["verdict"] == "pass" and truth != "pass":
                false_passes.append("%s: %s (%s)" % (name, check_id, finding["evidence"]))
            if finding["verdict"] == "fail" and truth == "pass":
                false_fails.append("%s: %s (%s)" % (name, check_id, finding["evidence"]))
            assert finding["passed"] is (finding["verdict"] == "pass")
    assert false_passes == []
    assert false_fails == []
    # The degradation was really met: answers were retried, and some stayed inconclusive.
    assert summary["retries"] > 0
    assert summary["inconclusive"] > 0
    assert "resets_all: reachable" in summary["inconclusive_checks"]
    # An inconclusive check at or above fail_on (high here) fails the task by default, like
    # a failed one; a medium one does not.
    for name, per_endpoint in findings.items():
        for check_id, finding in per_endpoint.items():
            if finding["verdict"] == "inconclusive":
                assert ("%s: %s" % (name, check_id) in summary["failing"]) is (finding["severity"] == "high")
    # Every schedule was exercised.
    assert {action for actions in degrading.actions.values() for action in actions} >= {
        "reset", "slow", "silent", "cut", "pass"}


def test_a_retry_that_gets_an_answer_settles_the_check(scp_factory):
    # The front resets the first connection and forwards every later one.
    proxy = DegradingProxy(scp_factory(ScpPolicy.OPEN), {"once": lambda i: "reset" if i == 0 else "pass"})
    try:
        findings, reports, _s = audit([endpoint("once", proxy.ports["once"])], checks=["any_ae"])
    finally:
        proxy.stop()
    finding = findings["once"]["any_ae"]
    assert finding["verdict"] == "fail"
    assert "retried after %ss (first: connection reset without any answer PDU)" % BACKOFF in finding["evidence"]
    assert reports[0]["retries"] == 1 and reports[0]["associations"] == 2


# --- through ansible ----------------------------------------------------------------------


def test_module_fails_on_inconclusive_by_default_and_reports_them(degrading):
    args = dict(endpoints=[endpoint("resets_all", degrading.ports["resets_all"])], checks=["any_ae"], timeout=1,
                retry_backoff=BACKOFF)
    rc, out, res = run_module("dicom_audit", args)
    assert rc != 0, out
    assert res["summary"]["inconclusive"] == 1
    assert res["summary"]["inconclusive_checks"] == ["resets_all: reachable"]
    assert "1 inconclusive" in res["msg"] and "resets_all: reachable" in res["msg"]
    assert res["endpoints"][0]["findings"][0]["verdict"] == "inconclusive"
    assert res["endpoints"][0]["findings"][0]["passed"] is False


def test_module_reports_inconclusive_without_failing_when_asked(degrading):
    args = dict(endpoints=[endpoint("resets_all", degrading.ports["resets_all"])], checks=["any_ae"], timeout=1,
                retry_backoff=BACKOFF, fail_on_inconclusive=False)
    rc, out, res = run_module("dicom_audit", args)
    assert rc == 0, out
    assert res["summary"]["inconclusive"] == 1
    assert res["summary"]["failing"] == []


def test_connect_timeout_bounds_a_host_that_never_completes_the_handshake():
    # The kernel drops the SYNs, exactly what a silent host looks like. connect_timeout, not
    # timeout, bounds it.
    with handshake_never_completes() as port:
        findings, reports, _s = audit([endpoint("full", port)], timeout=30, connect_timeout=0.5, checks=["any_ae"])
    finding = findings["full"]["reachable"]
    assert finding["verdict"] == "fail"
    assert "connect timeout" in finding["evidence"]
    assert reports[0]["associations"] == 1


def test_invalid_new_options_are_refused_before_any_traffic():
    config = dict(endpoints=[endpoint("x", 104)], connect_timeout=-1, retry_backoff=-1, plain_ports=[0],
                  vendor_ae_titles=["BAD\\AE"])
    errors = da.validate(config)
    assert "connect_timeout must be a positive number of seconds" in errors
    assert "retry_backoff must be a number of seconds, 0 or more" in errors
    assert any(e.startswith("plain_ports[0]") for e in errors)
    assert any(e.startswith("vendor_ae_titles[0]") and "backslash" in e for e in errors)


# --- per_host_concurrency -----------------------------------------------------------------------


@pytest.mark.parametrize("per_host, bounded", [(1, True), (8, False)])
def test_one_host_never_holds_more_of_the_audits_associations_than_per_host_concurrency(scp_factory, monkeypatch,
                                                                                        per_host, bounded):
    # Counted where each association is made, around the engine's own probe: a count taken
    # on the server's side sees a closed connection's FIN only after the next one is accepted.
    from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_probe as dp

    in_flight = {"now": 0, "peak": 0}
    real_probe = dp.Runner.probe

    async def counted(self, req):
        in_flight["now"] += 1
        in_flight["peak"] = max(in_flight["peak"], in_flight["now"])
        try:
            return await real_probe(self, req)
        finally:
            in_flight["now"] -= 1

    monkeypatch.setattr(dp.Runner, "probe", counted)
    findings, _r, _s = audit([endpoint("a", scp_factory(ScpPolicy.OPEN))], calling_ae="CT01", concurrency=64,
                             per_host_concurrency=per_host)
    assert findings["a"]["authorized"]["verdict"] == "pass"
    if bounded:
        assert in_flight["peak"] == 1
    else:
        # The twin: without the bound the same checks go out together.
        assert in_flight["peak"] > 1
