# -*- coding: utf-8 -*-
"""How dicom_audit turns a probe result into a verdict: what overload can produce is never
read as an answer, and the summary counts the three verdicts apart.

The results here have the shape dicom_probe returns; the probe itself is tested against real
and hostile servers in tests/integration/modules."""

from __future__ import annotations

import pytest

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_audit as da
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_pdu as pdu
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_vendor_aes as vendor


def result(outcome, **extra):
    base = dict(outcome=outcome, called_ae="PACS", calling_ae="CT01", port=104, reject=None, abort=None, tls=None,
                detail=None, connected=outcome != "refused", no_answer=None, operation=None, operations=[])
    base.update(extra)
    return base


def reject(result_code, source, reason):
    return pdu.reject_names(result_code, source, reason)


@pytest.mark.parametrize("res, why", [
    (result("timeout"), "no answer in time"),
    (result("timeout", connected=False), "no TCP connection in time"),
    (result("refused"), "connection refused"),
    (result("aborted", no_answer="reset"), "connection reset without any answer PDU"),
    (result("aborted", no_answer="closed"), "connection closed without any answer PDU"),
    (result("rejected", reject=reject(2, 3, 1)), "reject for load (temporary-congestion)"),
    (result("rejected", reject=reject(2, 3, 2)), "reject for load (local-limit-exceeded)"),
])
def test_what_overload_can_produce_is_a_symptom(res, why):
    assert da.association_symptom(res) == why


@pytest.mark.parametrize("res", [
    result("accepted"),
    result("rejected", reject=reject(1, 1, 3)),
    # pynetdicom refuses a bad identity with a transient reject from ACSE: a decision.
    result("rejected", reject=reject(2, 2, 1)),
    result("aborted", abort=pdu.abort_names(2, 0)),
    result("aborted", detail="protocol error: peer sent non-DICOM data (first byte 0x48)"),
    result("tls_failed"),
])
def test_an_answer_is_no_symptom(res):
    assert da.association_symptom(res) is None


def test_a_close_is_the_answer_only_for_the_plain_tcp_checks():
    closed = result("aborted", no_answer="reset")
    assert da.association_symptom(closed, "any_ae")
    assert da.association_symptom(closed, "plaintext_accepted") is None
    assert da.association_symptom(closed, "plain_beside_tls") is None
    # A port with nothing on it answers plain_beside_tls; it is no answer to the others.
    assert da.association_symptom(result("refused"), "plain_beside_tls") is None
    assert da.association_symptom(result("refused"), "authorized") == "connection refused"


def _op(name, op_result, status=None, **extra):
    operation = dict(name=pdu.OPERATIONS[name]["name"], result=op_result, status=status, succeeded=op_result == "success",
                     status_category=None, detail=None, matches=0, pending=0, suboperations=None)
    operation.update(extra)
    return operation


@pytest.mark.parametrize("op_result, status, symptomatic", [
    ("timeout", None, True), ("closed", None, True), ("failure", 0xA701, True),
    ("failure", 0xC000, False), ("aborted", None, False), ("success", 0, False), ("not_run", None, False),
])
def test_an_operation_cut_off_or_out_of_resources_is_a_symptom(op_result, status, symptomatic):
    res = result("accepted", operations=[_op("move", op_result, status)])
    assert bool(da.symptom("move_destination_unchecked", res)) is symptomatic
    # An association-level check does not wait for the operation.
    assert da.symptom("any_ae", res) is None


class _Ctx:
    random_destination = "DRANDOM"


@pytest.mark.parametrize("op, verdict", [
    (_op("move", "failure", 0xA801), "pass"),
    (_op("move", "success", 0x0000, suboperations={"completed": 0}), "fail"),
    (_op("move", "failure", 0xC000, pending=1), "fail"),
    (_op("move", "failure", 0xC000), "pass"),
    (_op("move", "timeout"), "inconclusive"),
    (_op("move", "protocol_error"), "inconclusive"),
    (_op("move", "aborted"), "pass"),
    (_op("move", "context_rejected"), "pass"),
    (_op("move", "failure", 0x0124), "pass"),
])
def test_move_destination_verdicts(op, verdict):
    res = result("accepted", operations=[op])
    assert da.judge("move_destination_unchecked", [res], _Ctx())["verdict"] == verdict


def test_an_inconclusive_result_never_passes_and_keeps_passed_false():
    res = result("aborted", no_answer="reset", inconclusive="connection reset without any answer PDU, and again after 1s")
    for check_id in ("any_ae", "no_identity", "wrong_passcode", "tls_no_client_cert", "authorized", "cfind_exposure",
                     "cget_exposure", "storage_exposure", "move_destination_unchecked"):
        finding = da.judge(check_id, [res], _Ctx())
        assert finding["verdict"] == "inconclusive", check_id
        assert finding["passed"] is False
        assert set(finding) >= {"id", "severity", "passed", "evidence", "verdict"}


def test_storage_exposure_reads_the_accepted_contexts():
    storage_id = sorted(pdu.STORAGE_CONTEXT_IDS)[0]
    accepted = result("accepted", accepted_contexts=[1, storage_id])
    assert da.judge("storage_exposure", [accepted], _Ctx())["verdict"] == "fail"
    echo_only = result("accepted", accepted_contexts=[1])
    assert da.judge("storage_exposure", [echo_only], _Ctx())["verdict"] == "pass"
    # An operation cut off on the same association does not make the offer inconclusive.
    cut = dict(accepted, inconclusive="C-FIND timeout")
    assert da.judge("storage_exposure", [cut], _Ctx())["verdict"] == "fail"


def _report(name, *verdicts):
    return {"name": name, "associations": 1, "retries": 0, "findings": [
        {"id": "any_ae" if i == 0 else "called_ae_guess", "severity": "high" if i == 0 else "medium",
         "passed": v == "pass", "verdict": v, "evidence": ""} for i, v in enumerate(verdicts)]}


def test_summary_counts_the_three_verdicts_apart():
    reports = [_report("a", "pass", "fail"), _report("b", "inconclusive", "inconclusive")]
    summary = da.summarize(reports, 0.1, "high", True)
    assert (summary["passed"], summary["failed"], summary["inconclusive"]) == (1, {"high": 0, "medium": 1}, 2)
    assert summary["inconclusive_checks"] == ["b: any_ae", "b: called_ae_guess"]
    # High and inconclusive fails the task; the medium one is below fail_on.
    assert summary["failing"] == ["b: any_ae"]
    assert da.summarize(reports, 0.1, "medium", True)["failing"] == ["a: called_ae_guess", "b: any_ae", "b: called_ae_guess"]
    assert da.summarize(reports, 0.1, "high", False)["failing"] == []
    assert da.summarize(reports, 0.1, "never", True)["failing"] == []


def test_vendor_titles_are_valid_ae_titles_with_a_source_and_extend_without_duplicates():
    for title, roles, source in vendor.VENDOR_AE_TITLES:
        assert pdu.ae_title_error(title) is None, title
        assert set(roles) <= {"called", "calling"} and roles
        assert source
    calling = vendor.titles("calling", ["SITEPACS", "STORESCU", " EXTRA "])
    assert calling.count("STORESCU") == 1
    assert calling[-2:] == ["SITEPACS", "EXTRA"]
    assert "ANY-SCP" in vendor.titles("called") and "ANY-SCP" not in vendor.titles("calling")
