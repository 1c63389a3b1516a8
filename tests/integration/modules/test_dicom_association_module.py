# -*- coding: utf-8 -*-
"""dicom_association run as a real module through ``ansible``: argument handling, the
expect assertion, check mode and no_log."""

from __future__ import annotations

from dicom_lab import LOOPBACK, SECRET_PASSCODE, USERS, ScpPolicy, run_module


def test_expected_accept_passes_unchanged(scp_factory):
    rc, out, res = run_module("dicom_association", dict(host=LOOPBACK, port=scp_factory(ScpPolicy.OPEN), expect="accepted"))
    assert rc == 0, out
    assert res["outcome"] == "accepted"
    assert res["changed"] is False
    assert res["operation"]["name"] == "C-ECHO"
    assert res["operation"]["status"] == 0


def test_expected_accept_fails_with_what_happened(scp_factory):
    port = scp_factory(ScpPolicy.CALLING_WHITELIST)
    rc, out, res = run_module("dicom_association", dict(host=LOOPBACK, port=port, calling_ae="INTRUDER", expect="accepted"))
    assert rc != 0
    assert res["failed"] is True
    assert "expected the association to be accepted, but it was rejected" in res["msg"]
    assert "calling-ae-not-recognized" in res["msg"]
    assert res["reject"]["reason"] == 3


def test_expect_reason_matches_the_reject(scp_factory):
    port = scp_factory(ScpPolicy.CALLING_WHITELIST)
    rc, out, res = run_module(
        "dicom_association", dict(host=LOOPBACK, port=port, calling_ae="INTRUDER", expect_reason="calling-ae-not-recognized")
    )
    assert rc == 0, out
    assert res["outcome"] == "rejected"


def test_expect_reason_mismatch_fails(scp_factory):
    port = scp_factory(ScpPolicy.CALLING_WHITELIST)
    rc, out, res = run_module(
        "dicom_association", dict(host=LOOPBACK, port=port, calling_ae="INTRUDER", expect_reason="called-ae-not-recognized")
    )
    assert rc != 0
    assert "expected reject reason called-ae-not-recognized, but the reason was calling-ae-not-recognized" in res["msg"]


def test_expected_denial_fails_when_accepted(scp_factory):
    rc, out, res = run_module("dicom_association", dict(host=LOOPBACK, port=scp_factory(ScpPolicy.OPEN), expect="denied"))
    assert rc != 0
    assert "expected the association to be denied, but it was accepted" in res["msg"]


def test_check_mode_reports_the_real_outcome(scp_factory):
    port = scp_factory(ScpPolicy.CALLING_WHITELIST)
    rc, out, res = run_module("dicom_association", dict(host=LOOPBACK, port=port, calling_ae="CT01", expect="accepted"), check=True)
    assert rc == 0, out
    assert res["outcome"] == "accepted"
    assert res["changed"] is False


def test_passcode_never_appears_in_verbose_output(scp_factory):
    port = scp_factory(ScpPolicy.IDENTITY)
    args = dict(
        host=LOOPBACK,
        port=port,
        identity=dict(type="username_passcode", username="ct01", passcode=SECRET_PASSCODE),
        tls=dict(enabled=False, key_password="key-password-" + SECRET_PASSCODE),
        expect="accepted",
    )
    rc, out, res = run_module("dicom_association", args, verbosity=4)
    assert rc == 0, out
    assert res["outcome"] == "accepted"
    assert SECRET_PASSCODE not in out
    assert "ct01" in out  # the output is really the verbose run, not an empty one


def test_passcode_is_masked_when_the_task_fails(scp_factory):
    port = scp_factory(ScpPolicy.IDENTITY)
    wrong = "not-" + USERS["ct01"][::-1]
    args = dict(host=LOOPBACK, port=port, identity=dict(type="username_passcode", username="ct01", passcode=wrong), expect="accepted")
    rc, out, res = run_module("dicom_association", args, verbosity=3)
    assert rc != 0
    assert res["outcome"] == "rejected"
    assert wrong not in out


def test_token_never_appears_in_verbose_output(scp_factory):
    token = "eyJhbGciOiJub25lIn0.c2VjcmV0LXRva2Vu."
    args = dict(host=LOOPBACK, port=scp_factory(ScpPolicy.IDENTITY), identity=dict(type="jwt", token=token))
    rc, out, res = run_module("dicom_association", args, verbosity=4)
    assert rc == 0, out
    assert token not in out


def test_long_ae_title_fails_before_any_traffic(hostile):
    before = sum(hostile.connections.values())
    rc, out, res = run_module("dicom_association", dict(host=LOOPBACK, port=hostile.ports["close"], calling_ae="A" * 17))
    assert rc != 0
    assert "at most 16" in res["msg"]
    assert "nothing was sent" in res["msg"]
    assert sum(hostile.connections.values()) == before


def test_missing_certificate_file_fails_before_any_traffic(hostile, tmp_path):
    before = sum(hostile.connections.values())
    tls = dict(enabled=True, ca_file=str(tmp_path / "missing-ca.pem"))
    rc, out, res = run_module("dicom_association", dict(host=LOOPBACK, port=hostile.ports["close"], tls=tls))
    assert rc != 0
    assert "tls.ca_file" in res["msg"] and "does not exist" in res["msg"]
    assert sum(hostile.connections.values()) == before


def test_port_out_of_range_fails_clearly():
    rc, out, res = run_module("dicom_association", dict(host=LOOPBACK, port=70000))
    assert rc != 0
    assert "out of range" in res["msg"]


def test_identity_type_without_passcode_fails_clearly():
    rc, out, res = run_module("dicom_association", dict(host=LOOPBACK, port=104, identity=dict(type="username_passcode", username="ct01")))
    assert rc != 0
    assert "needs identity.passcode" in res["msg"]


def test_hostile_server_gives_an_outcome_through_the_module(hostile):
    rc, out, res = run_module("dicom_association", dict(host=LOOPBACK, port=hostile.ports["silence"], timeout=0.5))
    assert rc == 0, out
    assert res["outcome"] == "timeout"
