# -*- coding: utf-8 -*-
"""playbooks/verify.yml's modality play against real DICOM TLS servers on loopback.

The registered modality must get its C-ECHO and its C-STORE through, over TLS with its
client certificate, and the same C-STORE under an unknown AE title must be rejected with
calling-ae-not-recognized. Each check has its twin here: a server that refuses the store,
and one that lets any AE title in. Every check runs whatever an earlier one found, and the
reports (JSON, JUnit XML, HTML) hold each of them before the run fails.
"""

from __future__ import annotations

import stat

import pytest
from playbook_lab import REGISTERED_AE, client_tls, load_reports, reports_dir, run_verify, start_tls_pacs

CALLING_AE_TASK = "Stop unless this modality has its registered AE title in dicomsec_calling_ae"
ECHO_TASK = "C-ECHO every PACS as the registered AE title, with this position's certificate and identity"
STORE_TASK = "C-STORE one synthetic instance (PatientID DICOMSEC-PROBE) to every PACS as the registered AE title"
UNKNOWN_AE_TASK = "Offer the same C-STORE under an unknown AE title and expect calling-ae-not-recognized"
FINAL_TASK = "Fail the run when any check failed or could not tell, now that the reports are written"


def by_control(document):
    return {(r["control"], r["request"]["dimse"], r["request"]["calling_ae"]): r for r in document["records"]}


def modality(pki):
    return {"dicomsec_calling_ae": REGISTERED_AE, "dicomsec_probe_tls": client_tls(pki)}


def test_modality_play_passes_where_echo_and_store_succeed_and_an_unknown_ae_is_rejected(pki, servers, tmp_path):
    server = start_tls_pacs(pki, calling_aes=[REGISTERED_AE])
    port = servers(server)
    rc, out, tasks = run_verify(tmp_path, port, "modalities", modality(pki))
    assert rc == 0, out
    echo = tasks[ECHO_TASK]["results"][0]
    assert echo["outcome"] == "accepted" and echo["tls"]["version"], out
    assert echo["operation"]["name"] == "C-ECHO" and echo["operation"]["succeeded"] is True, out
    store = tasks[STORE_TASK]["results"][0]
    assert store["operation"]["name"] == "C-STORE" and store["operation"]["succeeded"] is True, out
    # The instance really arrived, and it is the marked synthetic one.
    assert len(server.stored) == 1, out
    assert server.stored[0].PatientID == "DICOMSEC-PROBE"
    assert server.stored[0].SOPInstanceUID == store["operation"]["sop_instance_uid"]
    unknown = tasks[UNKNOWN_AE_TASK]["results"][0]
    assert unknown["outcome"] == "rejected" and unknown["reject"]["reason_name"] == "calling-ae-not-recognized", out
    assert tasks[FINAL_TASK].get("failed") is not True, out
    # The reports hold the three checks, each passed, with what was tried and what came back.
    document, junit, page = load_reports(tmp_path)
    assert document["summary"] == {"total": 3, "passed": 3, "failed": 0, "inconclusive": 0}
    records = by_control(document)
    assert set(records) == {("authorized_path", "echo", REGISTERED_AE), ("authorized_path", "store", REGISTERED_AE),
                            ("ae_whitelist", "store", "NOT-REGISTERED")}
    refused = records[("ae_whitelist", "store", "NOT-REGISTERED")]
    assert refused["outcome"].startswith("rejected: calling-ae-not-recognized"), refused
    assert (refused["site"], refused["position"], refused["role"], refused["target"]) == (
        "default", "lab-modality", "modality", "lab-pacs")
    assert refused["request"]["tls"] == "yes" and refused["request"]["client_certificate"] == "yes"
    assert refused["address"] == "127.0.0.1:%d" % port and refused["time"].endswith("Z")
    assert junit.get("tests") == "3" and junit.get("failures") == "0" and junit.get("errors") == "0"
    assert '<span class="count pass" data-count="passed">3 passed</span>' in page
    for name in ("verify.json", "verify.junit.xml", "verify.html"):
        assert stat.S_IMODE((reports_dir(tmp_path) / name).stat().st_mode) == 0o640


def test_modality_play_fails_where_the_pacs_answers_echo_but_refuses_the_store(pki, servers, tmp_path):
    # 0xA700: out of resources, a failure status; the C-ECHO alone would have passed.
    port = servers(start_tls_pacs(pki, calling_aes=[REGISTERED_AE], store_status=0xA700))
    rc, out, tasks = run_verify(tmp_path, port, "modalities", modality(pki))
    assert rc != 0, out
    assert tasks[ECHO_TASK].get("failed") is not True, out
    store = tasks[STORE_TASK]
    assert store["failed"] is True, out
    assert store["results"][0]["outcome"] == "accepted", out
    assert store["results"][0]["operation"]["result"] == "failure", out
    assert store["results"][0]["operation"]["status"] == 0xA700, out
    # The failed store did not stop the checks after it, and the run failed at the end,
    # naming it, after the reports were written.
    assert tasks[UNKNOWN_AE_TASK].get("failed") is not True, out
    final = tasks[FINAL_TASK]
    assert final["failed"] is True, out
    assert "1 of 3 checks failed" in final["msg"], final["msg"]
    assert "FAIL authorized_path: lab-modality (modality) -> lab-pacs: expected accepted, and the C-STORE succeeds" in final["msg"]
    document, junit, _page = load_reports(tmp_path)
    assert document["summary"]["failed"] == 1 and document["summary"]["passed"] == 2
    failed = by_control(document)[("authorized_path", "store", REGISTERED_AE)]
    assert failed["verdict"] == "fail" and "C-STORE failure (status 0xA700)" in failed["outcome"], failed
    assert junit.get("failures") == "1"
    failure = junit.find("./testsuite[@name='default.authorized_path']/testcase/failure")
    assert failure is not None and "0xA700" in failure.get("message")


def test_modality_play_fails_where_the_pacs_lets_an_unknown_ae_title_in(pki, servers, tmp_path):
    port = servers(start_tls_pacs(pki))
    rc, out, tasks = run_verify(tmp_path, port, "modalities", modality(pki))
    assert rc != 0, out
    assert tasks[STORE_TASK].get("failed") is not True, out
    unknown = tasks[UNKNOWN_AE_TASK]
    assert unknown["failed"] is True, out
    assert unknown["results"][0]["outcome"] == "accepted", out
    assert tasks[FINAL_TASK]["failed"] is True, out
    document, junit, page = load_reports(tmp_path)
    broken = by_control(document)[("ae_whitelist", "store", "NOT-REGISTERED")]
    assert broken["verdict"] == "fail" and broken["outcome"].startswith("accepted"), broken
    assert "expected an A-ASSOCIATE-RJ, but the association was accepted" in broken["evidence"]
    assert junit.find("./testsuite[@name='default.ae_whitelist']/testcase/failure") is not None
    assert page.index('<tr class="check fail"') < page.index('<tr class="check pass"')


def test_modality_without_its_registered_ae_title_is_stopped_before_any_association(pki, servers, tmp_path):
    port = servers(start_tls_pacs(pki, calling_aes=[REGISTERED_AE]))
    rc, out, tasks = run_verify(tmp_path, port, "modalities", {"dicomsec_probe_tls": client_tls(pki)})
    assert rc != 0, out
    check = tasks[CALLING_AE_TASK]
    assert check["failed"] is True, out
    assert check["msg"] == "dicomsec_calling_ae of lab-modality must be the AE title registered for it"
    assert ECHO_TASK not in tasks, out
    # The report says the position made no check, rather than looking complete and green.
    document, _junit, _page = load_reports(tmp_path)
    assert [(r["control"], r["position"], r["verdict"]) for r in document["records"]] == [
        ("position", "lab-modality", "inconclusive")]
    assert "dicomsec_calling_ae of lab-modality must be the AE title registered for it" in document["records"][0]["evidence"]


SECRETS = {
    "username_passcode": {"type": "username_passcode", "username": "ct01", "passcode": "Pq7-report-secret-zX4"},
    "jwt": {"type": "jwt", "token": "eyJhbGciOiJIUzI1NiJ9.report-secret-token.c2lnbmF0dXJl"},
}


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_no_report_holds_the_identity_secret_the_position_presented(pki, servers, tmp_path, kind):
    port = servers(start_tls_pacs(pki, calling_aes=[REGISTERED_AE]))
    identity = SECRETS[kind]
    secret = identity.get("passcode") or identity.get("token")
    position = dict(modality(pki), dicomsec_probe_identity=identity)
    rc, out, _tasks = run_verify(tmp_path, port, "modalities", position)
    assert rc == 0, out
    document, _junit, _page = load_reports(tmp_path)
    assert {r["request"]["identity"] for r in document["records"]} == {kind}
    for name in ("verify.json", "verify.junit.xml", "verify.html"):
        text = (reports_dir(tmp_path) / name).read_text()
        # Not the secret, nor the part of a token that carries its claims.
        assert secret not in text and secret.split(".")[1 if kind == "jwt" else 0] not in text, name
    assert secret not in out
