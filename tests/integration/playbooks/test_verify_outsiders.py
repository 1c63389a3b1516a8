# -*- coding: utf-8 -*-
"""playbooks/verify.yml's outsider play against real DICOM TLS servers on loopback.

An outsider's refusal proves the network control only if the outsider presented what a
legitimate client presents. Each test runs the real playbook (playbook_lab.run_verify)
against one TLS PACS on a loopback port, with the controller itself as the outsider.
"""

from __future__ import annotations

from dicom_lab import free_port, start_tls_scp
from playbook_lab import REGISTERED_AE, client_tls, load_reports, run_verify, start_tls_pacs

PROBE_TASK = "Expect every PACS to turn this host away while it presents a registered AE title and valid credentials"
TLS_TASK = "Fail where TLS turned this host away, since its credentials are valid and only its address may be refused"
CREDENTIALS_TASK = "Stop where a TLS PACS that requires client certificates would see none, since its refusal would prove nothing"
AE_TASK = "Stop unless this host presents an AE title registered with each PACS"
FINAL_TASK = "Fail the run when any check failed or could not tell, now that the reports are written"


def outsider_record(tmp_path):
    document, junit, _page = load_reports(tmp_path)
    [record] = document["records"]
    assert (record["control"], record["position"], record["role"]) == ("source_whitelist", "lab-outsider", "outsider")
    return record, junit


def test_outsider_check_fails_where_a_tls_pacs_accepts_the_outsiders_valid_certificate(pki, servers, tmp_path):
    # The server lets in any client with a certificate from its CA: a PACS without the
    # network control. A check that sent no certificate would pass here, refused in the
    # handshake.
    port = servers(start_tls_scp(pki))
    rc, out, tasks = run_verify(tmp_path, port, "outsiders", {"dicomsec_probe_tls": client_tls(pki)})
    assert rc != 0, out
    probe = tasks[PROBE_TASK]
    assert probe["failed"] is True, out
    assert probe["results"][0]["outcome"] == "accepted", out
    assert probe["results"][0]["tls"]["version"], out
    assert "expected the association to be denied, but it was accepted" in probe["results"][0]["msg"]
    assert tasks[FINAL_TASK]["failed"] is True, out
    record, junit = outsider_record(tmp_path)
    assert record["verdict"] == "fail" and record["outcome"].startswith("accepted over TLS"), record
    assert record["request"]["calling_ae"] == REGISTERED_AE and record["request"]["client_certificate"] == "yes"
    assert junit.get("failures") == "1"


def test_outsider_check_passes_where_the_tls_pacs_rejects_the_outsiders_ae_title(pki, servers, tmp_path):
    port = servers(start_tls_pacs(pki, calling_aes=["MR02"]))
    rc, out, tasks = run_verify(tmp_path, port, "outsiders", {"dicomsec_probe_tls": client_tls(pki)})
    assert rc == 0, out
    result = tasks[PROBE_TASK]["results"][0]
    assert result["outcome"] == "rejected", out
    assert result["reject"]["reason_name"] == "calling-ae-not-recognized"
    # The rejection came after a completed handshake with the outsider's certificate.
    assert result["tls"]["version"], out
    assert tasks[TLS_TASK].get("failed") is not True, out
    record, junit = outsider_record(tmp_path)
    assert record["verdict"] == "pass" and record["outcome"].startswith("rejected: calling-ae-not-recognized"), record
    assert junit.get("failures") == "0" and junit.get("tests") == "1"


def test_outsider_check_passes_where_nothing_listens_on_the_pacs_port(pki, tmp_path):
    port = free_port()
    rc, out, tasks = run_verify(tmp_path, port, "outsiders", {"dicomsec_probe_tls": client_tls(pki)})
    assert rc == 0, out
    assert tasks[PROBE_TASK]["results"][0]["outcome"] == "refused", out
    record, _junit = outsider_record(tmp_path)
    assert record["verdict"] == "pass" and record["outcome"] == "refused", record


def test_outsider_check_fails_where_only_the_tls_handshake_refused_the_outsider(pki, servers, tmp_path):
    # A certificate from a CA the PACS does not trust: the handshake fails, which says
    # the outsider's credentials are wrong, not that its address is refused.
    port = servers(start_tls_scp(pki))
    rc, out, tasks = run_verify(tmp_path, port, "outsiders", {"dicomsec_probe_tls": client_tls(pki, client="intruder")})
    assert rc != 0, out
    assert tasks[PROBE_TASK]["results"][0]["outcome"] == "tls_failed", out
    check = tasks[TLS_TASK]
    assert check["failed"] is True, out
    message = check["results"][0]["msg"]
    assert "refused lab-outsider in the TLS handshake" in message
    assert "dicomsec_probe_tls of this host is not accepted by the PACS" in message
    # The refusal in the handshake is a failed check in the report too, saying why.
    record, _junit = outsider_record(tmp_path)
    assert record["verdict"] == "fail" and record["outcome"].startswith("tls_failed"), record
    assert record["evidence"].startswith("refused in the TLS handshake although its credentials are valid")


def test_outsider_without_a_client_certificate_is_stopped_before_any_association(pki, servers, tmp_path):
    port = servers(start_tls_scp(pki))
    rc, out, tasks = run_verify(tmp_path, port, "outsiders", {})
    assert rc != 0, out
    check = tasks[CREDENTIALS_TASK]
    assert check["failed"] is True, out
    assert "lab-pacs speaks DICOM TLS and requires client certificates, but dicomsec_probe_tls of lab-outsider has no cert_file" in (
        check["results"][0]["msg"]
    )
    assert PROBE_TASK not in tasks, out


def test_outsider_presenting_an_unregistered_ae_title_is_stopped_before_any_association(pki, servers, tmp_path):
    # Refused for its unknown AE title from anywhere, the outsider would prove nothing
    # about its position.
    port = servers(start_tls_scp(pki))
    rc, out, tasks = run_verify(tmp_path, port, "outsiders", {"dicomsec_probe_tls": client_tls(pki), "dicomsec_calling_ae": "NOBODY"})
    assert rc != 0, out
    check = tasks[AE_TASK]
    assert check["failed"] is True, out
    assert "lab-outsider would present NOBODY to lab-pacs, which registers CT01: set dicomsec_calling_ae" in (
        check["results"][0]["msg"]
    )
    assert PROBE_TASK not in tasks, out


def test_outsider_presents_the_registered_ae_title_by_default(pki, servers, tmp_path):
    # Without dicomsec_calling_ae the outsider presents the PACS's first registered title,
    # which this server knows: accepted, so the check fails.
    port = servers(start_tls_pacs(pki, calling_aes=[REGISTERED_AE]))
    rc, out, tasks = run_verify(tmp_path, port, "outsiders", {"dicomsec_probe_tls": client_tls(pki)})
    assert rc != 0, out
    assert tasks[PROBE_TASK]["results"][0]["outcome"] == "accepted", out
