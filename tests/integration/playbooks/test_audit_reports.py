# -*- coding: utf-8 -*-
"""playbooks/audit.yml against real DICOM servers on loopback: every finding of every
position in the reports, the run failing after they are written when a finding at or
above dicomsec_audit_fail_on failed, and passing where the defences held."""

from __future__ import annotations

from dicom_lab import free_port
from lab_servers import ScpPolicy, start_scp
from playbook_lab import AUDIT_PLAYBOOK, REGISTERED_AE, load_reports, reports_dir, run_verify

FINAL_TASK = ("Fail the run if a finding at or above dicomsec_audit_fail_on failed from any position, "
              "now that the reports are written")
PLAIN = {"dicomsec_dicom_tls": False}
CHECKS = {"dicomsec_calling_ae": REGISTERED_AE, "dicomsec_audit_checks": ["any_ae", "authorized"]}


def findings(document):
    return {r["control"]: r for r in document["records"]}


def test_audit_fails_after_writing_the_reports_where_the_pacs_lets_any_ae_title_in(servers, tmp_path):
    port = servers(start_scp(ScpPolicy.OPEN))
    rc, out, tasks = run_verify(tmp_path, port, "modalities", CHECKS, pacs_vars=PLAIN, playbook=AUDIT_PLAYBOOK)
    assert rc != 0, out
    final = tasks[FINAL_TASK]
    assert final["failed"] is True and "lab-modality: lab-pacs: any_ae" in final["msg"], out
    document, junit, page = load_reports(tmp_path, "audit")
    found = findings(document)
    assert found["any_ae"]["verdict"] == "fail" and found["any_ae"]["severity"] == "high"
    assert found["any_ae"]["outcome"] == "defence did not hold" and found["any_ae"]["evidence"]
    assert found["authorized"]["verdict"] == "pass"
    assert junit.find("./testsuite[@name='default.any_ae']/testcase/failure") is not None
    assert page.index('data-control="any_ae"') < page.index('data-control="authorized"')
    # The text report per position is still written beside them, its first line counted from
    # the same records.
    text = (reports_dir(tmp_path) / "lab-modality.txt").read_text()
    assert "any_ae" in text
    assert text.splitlines()[0].endswith("1 endpoints, 2 checks: 1 passed, 1 failed (1 high / 0 medium), 0 inconclusive; "
                                         "failing at or above high: lab-pacs: any_ae"), text


def test_audit_passes_and_reports_every_finding_where_the_calling_ae_whitelist_holds(servers, tmp_path):
    port = servers(start_scp(ScpPolicy.OPEN, calling_aes=[REGISTERED_AE]))
    rc, out, tasks = run_verify(tmp_path, port, "modalities", CHECKS, pacs_vars=PLAIN, playbook=AUDIT_PLAYBOOK)
    assert rc == 0, out
    assert tasks[FINAL_TASK].get("failed") is not True, out
    document, junit, _page = load_reports(tmp_path, "audit")
    assert {c: r["verdict"] for c, r in findings(document).items()} == {"any_ae": "pass", "authorized": "pass"}
    assert document["summary"]["failed"] == 0 and junit.get("failures") == "0"
    first = (reports_dir(tmp_path) / "lab-modality.txt").read_text().splitlines()[0]
    assert first.endswith("1 endpoints, 2 checks: 2 passed, 0 failed (0 high / 0 medium), 0 inconclusive"), first


def test_audit_below_fail_on_reports_the_failed_finding_without_failing_the_run(servers, tmp_path):
    port = servers(start_scp(ScpPolicy.OPEN))
    position = dict(CHECKS, dicomsec_audit_fail_on="never")
    rc, out, _tasks = run_verify(tmp_path, port, "modalities", position, pacs_vars=PLAIN, playbook=AUDIT_PLAYBOOK)
    assert rc == 0, out
    document, _junit, _page = load_reports(tmp_path, "audit")
    assert findings(document)["any_ae"]["verdict"] == "fail"


def test_an_outsider_that_reaches_no_pacs_is_a_pass_in_the_reports(tmp_path):
    rc, out, _tasks = run_verify(tmp_path, free_port(), "outsiders", CHECKS, pacs_vars=PLAIN, playbook=AUDIT_PLAYBOOK)
    assert rc == 0, out
    document, _junit, _page = load_reports(tmp_path, "audit")
    [record] = document["records"]
    assert (record["control"], record["verdict"], record["role"]) == ("reachable", "pass", "outsider")
    assert record["outcome"].startswith("denied: unreachable from this position")
