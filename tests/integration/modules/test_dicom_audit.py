# -*- coding: utf-8 -*-
"""dicom_audit's check matrix against real servers: every check has a server where it
must pass and one where it must fail."""

from __future__ import annotations

import time

import pytest

from dicom_lab import JWT_OK, LOOPBACK, SECRET_PASSCODE, USERS, ScpPolicy, free_port, run_module

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_audit as da

PASSCODE_IDENTITY = dict(type="username_passcode", username="ct01", passcode=USERS["ct01"])
# The pause before the one retry of an answer overload can produce; short, for the tests.
BACKOFF = 0.2


@pytest.fixture(scope="module")
def lab(scp_factory, tls_scp_factory, hostile):
    return {
        "open": dict(host=LOOPBACK, port=scp_factory(ScpPolicy.OPEN), called_ae="ANY-SCP"),
        "strict": dict(host=LOOPBACK, port=scp_factory(ScpPolicy.STRICT_AE, ae_title="PACS01"), called_ae="PACS01"),
        "whitelist": dict(host=LOOPBACK, port=scp_factory(ScpPolicy.CALLING_WHITELIST), called_ae="ANY-SCP"),
        "aliases": dict(host=LOOPBACK, port=scp_factory(ScpPolicy.CALLED_ALIASES), called_ae="PACS01"),
        "identity": dict(host=LOOPBACK, port=scp_factory(ScpPolicy.IDENTITY), called_ae="ANY-SCP"),
        "tls": dict(host=LOOPBACK, port=tls_scp_factory(), called_ae="ANY-SCP", tls=True),
        "tls_weak": dict(host=LOOPBACK, port=tls_scp_factory(legacy=True, require_client_cert=False), called_ae="ANY-SCP", tls=True),
        # Marked TLS, but it is the open plain-TCP SCP: plaintext must be reported.
        "tls_expected_plain": dict(host=LOOPBACK, port=scp_factory(ScpPolicy.OPEN), called_ae="ANY-SCP", tls=True),
        "dead": dict(host=LOOPBACK, port=free_port(), called_ae="ANY-SCP"),
        "silent": dict(host=LOOPBACK, port=hostile.ports["silence"], called_ae="ANY-SCP"),
    }


def run_audit(lab, names, pki=None, **config):
    endpoints = [dict(lab[n], name=n) for n in names]
    config = dict(dict(endpoints=endpoints, timeout=2, concurrency=32, retry_backoff=BACKOFF), **config)
    if pki is not None:
        config.setdefault("tls", pki.client_tls())
    assert da.validate(config) == []
    reports, summary = da.audit(config)
    return {r["name"]: {f["id"]: f for f in r["findings"]} for r in reports}, reports, summary


@pytest.fixture(scope="module")
def matrix(lab, pki):
    """One audit of every endpoint with passcode identity and a client certificate."""
    start = time.monotonic()
    findings, reports, summary = run_audit(
        lab, list(lab), pki, calling_ae="CT01", identity=PASSCODE_IDENTITY
    )
    return findings, reports, summary, time.monotonic() - start


def verdict(matrix, endpoint, check):
    return matrix[0][endpoint][check]["passed"]


def test_any_ae_fails_on_open_scp(matrix):
    assert verdict(matrix, "open", "any_ae") is False


def test_any_ae_passes_on_calling_whitelist(matrix):
    assert verdict(matrix, "whitelist", "any_ae") is True
    assert "calling-ae-not-recognized" in matrix[0]["whitelist"]["any_ae"]["evidence"]


def test_called_ae_guess_fails_when_called_ae_is_not_checked(matrix):
    finding = matrix[0]["whitelist"]["called_ae_guess"]
    assert finding["passed"] is False
    assert "not checked" in finding["evidence"]


def test_called_ae_guess_fails_when_a_default_title_is_also_accepted(matrix):
    finding = matrix[0]["aliases"]["called_ae_guess"]
    assert finding["passed"] is False
    assert finding["evidence"] == "accepted guessed called AE titles: PACS"


def test_called_ae_guess_passes_when_called_ae_is_checked(matrix):
    assert verdict(matrix, "strict", "called_ae_guess") is True
    assert "called-ae-not-recognized" in matrix[0]["strict"]["called_ae_guess"]["evidence"]


def test_no_identity_fails_on_open_scp(matrix):
    assert verdict(matrix, "open", "no_identity") is False


def test_no_identity_passes_when_identity_is_required(matrix):
    assert verdict(matrix, "identity", "no_identity") is True


def test_wrong_passcode_fails_on_open_scp(matrix):
    assert verdict(matrix, "open", "wrong_passcode") is False


def test_wrong_passcode_passes_when_passcode_is_checked(matrix):
    assert verdict(matrix, "identity", "wrong_passcode") is True


def test_identity_ignored_fails_on_open_scp(lab):
    findings, _r, _s = run_audit(lab, ["open"], identity=dict(type="jwt", token=JWT_OK), checks=["identity_ignored"])
    assert findings["open"]["identity_ignored"]["passed"] is False


def test_identity_ignored_passes_when_server_confirms_identity(lab):
    findings, _r, _s = run_audit(lab, ["identity"], identity=dict(type="jwt", token=JWT_OK), checks=["identity_ignored"])
    assert findings["identity"]["identity_ignored"]["passed"] is True


def test_plaintext_accepted_fails_where_tls_is_expected_but_plain_answers(matrix):
    assert verdict(matrix, "tls_expected_plain", "plaintext_accepted") is False


def test_plaintext_accepted_passes_on_tls_only_endpoint(matrix):
    assert verdict(matrix, "tls", "plaintext_accepted") is True


def test_tls_no_client_cert_fails_when_server_does_not_ask(matrix):
    assert verdict(matrix, "tls_weak", "tls_no_client_cert") is False


def test_tls_no_client_cert_passes_when_server_requires_one(matrix):
    assert verdict(matrix, "tls", "tls_no_client_cert") is True


def test_tls_legacy_fails_when_tls_1_1_is_accepted(matrix):
    finding = matrix[0]["tls_weak"]["tls_legacy"]
    assert finding["passed"] is False
    assert "TLSv1.1" in finding["evidence"]


def test_tls_legacy_passes_on_modern_server(matrix):
    assert verdict(matrix, "tls", "tls_legacy") is True


def test_tls_checks_are_skipped_on_plain_endpoints(matrix):
    report = next(r for r in matrix[1] if r["name"] == "open")
    skipped = {s["id"] for s in report["skipped"]}
    assert {"plaintext_accepted", "tls_no_client_cert", "tls_legacy"} <= skipped


def test_cfind_exposure_fails_and_reports_only_a_count(matrix):
    finding = matrix[0]["open"]["cfind_exposure"]
    assert finding["passed"] is False
    assert "2 matching studies" in finding["evidence"]


def test_cfind_exposure_passes_when_unknown_callers_are_rejected(matrix):
    assert verdict(matrix, "whitelist", "cfind_exposure") is True


def test_cfind_exposure_is_asked_separately_when_random_called_ae_is_rejected(matrix):
    # strict rejects the random called AE of the first association; the query check must
    # then use the real called AE (and is rejected on the calling AE).
    finding = matrix[0]["strict"]["cfind_exposure"]
    assert finding["passed"] is True
    assert "PACS01" in finding["evidence"]


def test_authorized_passes_for_whitelisted_calling_ae(matrix):
    assert verdict(matrix, "whitelist", "authorized") is True
    assert verdict(matrix, "tls", "authorized") is True
    assert verdict(matrix, "identity", "authorized") is True


def test_authorized_fails_for_calling_ae_not_on_whitelist(lab):
    findings, _r, _s = run_audit(lab, ["whitelist"], calling_ae="NOTLISTED", checks=["authorized"])
    assert findings["whitelist"]["authorized"]["passed"] is False


def test_authorized_is_skipped_without_credentials(lab):
    _f, reports, _s = run_audit(lab, ["open"], checks=["authorized"])
    assert reports[0]["skipped"][0]["id"] == "authorized"
    assert reports[0]["findings"] == []


def test_dead_and_silent_endpoints_are_unreachable_and_cost_one_retried_timeout(matrix):
    findings, reports, summary, elapsed = matrix
    # Nothing listens: a fact, no retry.  Connected but silent: what an overloaded server
    # does too, so it is asked once more and then called inconclusive, not unreachable-failed.
    assert findings["dead"]["reachable"]["verdict"] == "fail"
    assert findings["silent"]["reachable"]["verdict"] == "inconclusive"
    assert findings["dead"]["reachable"]["passed"] is False
    assert findings["silent"]["reachable"]["passed"] is False
    assert set(summary["unreachable"]) == {"dead", "silent"}
    assert "silent: reachable" in summary["inconclusive_checks"]
    # Two 2 s timeouts and the backoff for the silent endpoint, everything else concurrently.
    assert elapsed < 2 * 2 + BACKOFF + 2
    silent = next(r for r in reports if r["name"] == "silent")
    assert silent["associations"] == 2
    dead = next(r for r in reports if r["name"] == "dead")
    assert dead["associations"] == 1


def test_summary_counts_failures_by_severity(matrix):
    findings, reports, summary, dummy = matrix
    counted = {"high": 0, "medium": 0}
    inconclusive = 0
    for per_endpoint in findings.values():
        for finding in per_endpoint.values():
            if finding["verdict"] == "fail":
                counted[finding["severity"]] += 1
            inconclusive += finding["verdict"] == "inconclusive"
            assert finding["passed"] is (finding["verdict"] == "pass")
    assert summary["failed"] == counted
    assert summary["inconclusive"] == inconclusive == len(summary["inconclusive_checks"])
    assert summary["passed"] + sum(counted.values()) + inconclusive == summary["checks"]
    assert summary["checks"] == sum(len(f) for f in findings.values())
    assert "open: any_ae" in summary["failing"]


def test_no_credential_appears_in_the_report(matrix):
    assert USERS["ct01"] not in repr(matrix)


def test_default_orthanc_lets_any_ae_in(orthanc_open):
    config = dict(endpoints=[dict(name="orthanc", host=LOOPBACK, port=orthanc_open, called_ae="ORTHANC")], timeout=2,
                  concurrency=8, checks=["any_ae", "identity_ignored"])
    reports, dummy = da.audit(config)
    findings = {f["id"]: f for f in reports[0]["findings"]}
    assert findings["any_ae"]["passed"] is False
    assert findings["identity_ignored"]["passed"] is False


def test_hardened_orthanc_holds_the_ae_checks(orthanc_hardened):
    config = dict(endpoints=[dict(name="orthanc", host=LOOPBACK, port=orthanc_hardened, called_ae="ORTHANC")],
                  calling_ae="CT01", timeout=2, concurrency=8, checks=["any_ae", "called_ae_guess", "cfind_exposure", "authorized"])
    reports, dummy = da.audit(config)
    findings = {f["id"]: f["passed"] for f in reports[0]["findings"]}
    assert findings == {"any_ae": True, "called_ae_guess": True, "cfind_exposure": True, "authorized": True}


def test_storescp_accepts_any_ae(storescp):
    config = dict(endpoints=[dict(host=LOOPBACK, port=storescp, called_ae="STORESCP")], timeout=2, checks=["any_ae"])
    reports, dummy = da.audit(config)
    assert reports[0]["findings"][0]["passed"] is False


# --- through ansible ----------------------------------------------------------------------


def test_module_fails_on_high_findings_with_their_names(lab):
    args = dict(endpoints=[dict(lab["open"], name="open")], checks=["any_ae"], timeout=2)
    rc, out, res = run_module("dicom_audit", args)
    assert rc != 0
    assert "open: any_ae" in res["msg"]
    assert res["summary"]["failed"]["high"] == 1


def test_module_reports_without_failing_when_fail_on_never(lab):
    args = dict(endpoints=[dict(lab["open"], name="open")], checks=["any_ae"], timeout=2, fail_on="never")
    rc, out, res = run_module("dicom_audit", args, check=True)
    assert rc == 0, out
    assert res["changed"] is False
    assert res["endpoints"][0]["findings"][0]["passed"] is False


def test_medium_finding_fails_only_from_fail_on_medium(lab):
    args = dict(endpoints=[dict(lab["whitelist"], name="wl")], calling_ae="CT01", checks=["called_ae_guess"], timeout=2)
    rc_high, out, dummy = run_module("dicom_audit", dict(args, fail_on="high"))
    rc_medium, _o, res = run_module("dicom_audit", dict(args, fail_on="medium"))
    assert rc_high == 0, out
    assert rc_medium != 0
    assert "wl: called_ae_guess" in res["msg"]


def test_module_hides_passcode_in_verbose_output(lab):
    args = dict(
        endpoints=[dict(lab["identity"], name="id")],
        calling_ae="CT01",
        identity=PASSCODE_IDENTITY,
        checks=["no_identity", "wrong_passcode", "authorized"],
        timeout=2,
    )
    rc, out, res = run_module("dicom_audit", args, verbosity=4)
    assert rc == 0, out
    assert SECRET_PASSCODE not in out
    assert {f["id"]: f["passed"] for f in res["endpoints"][0]["findings"]} == {
        "no_identity": True, "wrong_passcode": True, "authorized": True
    }


def test_module_rejects_bad_endpoint_before_any_traffic(hostile):
    before = sum(hostile.connections.values())
    args = dict(endpoints=[dict(host=LOOPBACK, port=hostile.ports["close"], called_ae="BAD\\AE")])
    rc, out, res = run_module("dicom_audit", args)
    assert rc != 0
    assert "backslash" in res["msg"]
    assert sum(hostile.connections.values()) == before


def test_cfind_exposure_asked_separately_still_fails_when_answered(matrix):
    # aliases rejects the random called AE but answers queries on its real title.
    finding = matrix[0]["aliases"]["cfind_exposure"]
    assert finding["passed"] is False
    assert "2 matching studies" in finding["evidence"]


def test_hostile_endpoints_neither_hang_nor_crash_the_audit(hostile):
    modes = ["garbage", "endless", "giant", "reset", "close", "abort", "truncated_ac", "ac_then_garbage", "reject_then_reset"]
    config = dict(
        endpoints=[dict(name=m, host=LOOPBACK, port=hostile.ports[m], called_ae="ANY-SCP") for m in modes],
        calling_ae="CT01", timeout=1, concurrency=16, retry_backoff=BACKOFF,
    )
    start = time.monotonic()
    reports, summary = da.audit(config)
    elapsed = time.monotonic() - start
    # The endless PDU is the slowest: one timeout for its first probe and one for its retry;
    # nothing else may stack up beyond another round of timeouts.
    assert elapsed < 3 * 1 + BACKOFF + 1.5
    by_name = {r["name"]: {f["id"]: f for f in r["findings"]} for r in reports}
    assert by_name["endless"]["reachable"]["verdict"] == "inconclusive"
    # An answer, however hostile, is an answer: no association was made.
    for mode in ("garbage", "giant", "abort", "reject_then_reset"):
        assert by_name[mode]["any_ae"]["verdict"] == "pass", mode
    # No answer PDU at all (a reset, a close, half an A-ASSOCIATE-AC) is what overload
    # produces too: never a pass, and nothing else is audited.
    for mode in ("reset", "close", "truncated_ac"):
        assert by_name[mode]["reachable"]["verdict"] == "inconclusive", mode
        assert "any_ae" not in by_name[mode], mode
    # The hostile AC is an accepted association: any AE gets in, whatever follows.
    assert by_name["ac_then_garbage"]["any_ae"]["passed"] is False
    assert summary["endpoints"] == len(modes)


# ---------------------------------------------------------------------------------------
# Findings read from an association made for another check: each inference fails exactly
# when the check's own association would, and a pass always comes from the check's own
# request.
# ---------------------------------------------------------------------------------------

FULL_PLAIN = ["any_ae", "called_ae_guess", "no_identity", "wrong_passcode", "identity_ignored", "cfind_exposure", "authorized"]


def test_accepted_random_ae_association_also_fails_no_identity_and_called_ae_guess(matrix):
    # open accepts the first association (random titles, no identity): it proves both.
    no_identity = matrix[0]["open"]["no_identity"]
    guess = matrix[0]["open"]["called_ae_guess"]
    assert no_identity["passed"] is False and guess["passed"] is False
    assert "without user identity" in no_identity["evidence"]
    assert "random calling AE" in guess["evidence"]
    # first (with the C-FIND, the C-GET and the storage offer), wrong passcode,
    # identity_ignored with authorized, the C-MOVE: nothing else was sent.
    open_report = next(r for r in matrix[1] if r["name"] == "open")
    assert open_report["associations"] == 4


def test_rejected_random_ae_association_infers_nothing(matrix):
    # identity refuses the first association (no identity): no_identity must come from its
    # own association on the configured called AE and pass there.
    finding = matrix[0]["identity"]["no_identity"]
    assert finding["passed"] is True
    assert "called ANY-SCP, calling CT01" in finding["evidence"]


def test_random_called_ae_without_identity_accepted_fails_both_checks(matrix):
    # whitelist rejects the random calling AE but lets CT01 in on a random called AE
    # without identity: called_ae_guess and no_identity both fail from that association.
    no_identity = matrix[0]["whitelist"]["no_identity"]
    assert no_identity["passed"] is False
    assert "random called AE" in no_identity["evidence"]
    assert matrix[0]["whitelist"]["called_ae_guess"]["passed"] is False
    whitelist_report = next(r for r in matrix[1] if r["name"] == "whitelist")
    # first, random called AE without identity, wrong passcode, identity_ignored with
    # authorized, the unknown-caller checks with the real called AE, the C-MOVE.
    assert whitelist_report["associations"] == 6


def test_random_called_ae_rejected_still_fails_no_identity_on_the_real_called_ae(lab):
    # strict checks the called AE but needs no identity: the random called AE is rejected,
    # which proves nothing about identity, so no_identity is asked on PACS01 and fails.
    findings, reports, _s = run_audit(lab, ["strict"], calling_ae="CT01", identity=PASSCODE_IDENTITY, checks=FULL_PLAIN)
    assert findings["strict"]["no_identity"]["passed"] is False
    assert "called PACS01, calling CT01: accepted" in findings["strict"]["no_identity"]["evidence"]
    assert findings["strict"]["called_ae_guess"]["passed"] is True


def test_random_called_ae_rejected_without_identity_is_retried_with_identity(lab):
    # identity ignores the called AE but needs identity: the random called AE without
    # identity is rejected, with the authorized identity it is accepted, so the check fails.
    findings, _r, _s = run_audit(lab, ["identity"], calling_ae="CT01", identity=PASSCODE_IDENTITY, checks=FULL_PLAIN)
    guess = findings["identity"]["called_ae_guess"]
    assert guess["passed"] is False
    assert "random called AE" in guess["evidence"]
    assert findings["identity"]["no_identity"]["passed"] is True


def test_identity_ignored_and_authorized_share_one_association(lab):
    findings, reports, _s = run_audit(
        lab, ["identity"], calling_ae="CT01", identity=dict(type="jwt", token=JWT_OK), checks=["identity_ignored", "authorized"]
    )
    assert findings["identity"]["identity_ignored"]["passed"] is True
    assert findings["identity"]["authorized"]["passed"] is True
    assert "C-ECHO success (status 0x0000)" in findings["identity"]["authorized"]["evidence"]
    assert reports[0]["associations"] == 2  # the first association and the shared one


def test_shared_association_fails_identity_ignored_and_passes_authorized(lab):
    findings, reports, _s = run_audit(
        lab, ["open"], calling_ae="CT01", identity=PASSCODE_IDENTITY, checks=["identity_ignored", "authorized"]
    )
    assert findings["open"]["identity_ignored"]["passed"] is False
    assert findings["open"]["authorized"]["passed"] is True
    assert reports[0]["associations"] == 2


def test_authorized_is_asked_again_without_positive_response_when_the_shared_one_is_refused(lab, scp_factory):
    lab = dict(lab, picky=dict(host=LOOPBACK, port=scp_factory(ScpPolicy.NO_POSITIVE_RESPONSE), called_ae="ANY-SCP"))
    findings, reports, _s = run_audit(
        lab, ["picky"], calling_ae="CT01", identity=PASSCODE_IDENTITY, checks=["identity_ignored", "authorized"]
    )
    # Refused with the flag: identity_ignored holds; the authorized client's own request
    # (no flag) is then sent and accepted.
    assert findings["picky"]["identity_ignored"]["passed"] is True
    assert findings["picky"]["authorized"]["passed"] is True
    assert reports[0]["associations"] == 3


def test_authorized_still_fails_when_the_shared_association_and_its_retry_are_rejected(lab):
    findings, reports, _s = run_audit(
        lab, ["whitelist"], calling_ae="NOTLISTED", identity=PASSCODE_IDENTITY, checks=["identity_ignored", "authorized"]
    )
    assert findings["whitelist"]["identity_ignored"]["passed"] is True
    assert findings["whitelist"]["authorized"]["passed"] is False
    assert "calling-ae-not-recognized" in findings["whitelist"]["authorized"]["evidence"]
    assert reports[0]["associations"] == 3
