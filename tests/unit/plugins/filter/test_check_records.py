# -*- coding: utf-8 -*-
"""Report records from what a position's checks returned: verdicts, words and no secret."""

from __future__ import annotations

import json
import re

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.dicomsec.hardening.plugins.filter.check_records import (
    FilterModule,
    association_records,
    audit_records,
)

PASSCODE = "lab-only-Records7Tq2Wx"  # synthetic
IDENTITY = {"type": "username_passcode", "username": "probe", "passcode": PASSCODE}
PROBE_TLS = {"enabled": True, "ca_file": "/etc/p/ca.crt", "cert_file": "/etc/p/client.crt",
             "key_file": "/etc/p/client.key"}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def audit_result(*endpoints):
    return {"changed": False, "endpoints": list(endpoints), "summary": {"unreachable": []}, "msg": "audited"}


def endpoint(name, *findings, tls=False):
    return {"name": name, "host": "198.18.30.70", "port": 4242, "called_ae": "CLOUDPACS", "tls": tls,
            "findings": list(findings)}


def finding(check, passed, verdict=None, severity="high", evidence="what came back"):
    f = {"id": check, "passed": passed, "severity": severity, "evidence": evidence}
    if verdict is not None:
        f["verdict"] = verdict
    return f


def audit(result, **kwargs):
    args = dict(position="probe-a", role="authorized", targets={"pacs": {"site": "cloud"}}, unwelcome=[],
                expectations={"open_calling_ae": "an unknown calling AE is rejected"}, calling_ae="PROBE_A",
                probe_tls=PROBE_TLS, probe_identity=IDENTITY)
    args.update(kwargs)
    return audit_records(result, **args)


def test_both_filters_are_registered_by_name():
    assert set(FilterModule().filters()) == {"audit_records", "association_records"}


def test_audit_record_carries_site_request_expectation_and_evidence():
    [record] = audit(audit_result(endpoint("pacs", finding("open_calling_ae", True), tls=True)))
    assert record["site"] == "cloud"
    assert record["control"] == "open_calling_ae"
    assert record["position"] == "probe-a"
    assert record["role"] == "authorized"
    assert record["target"] == "pacs"
    assert record["address"] == "198.18.30.70:4242"
    assert record["request"] == {"check": "open_calling_ae", "called_ae": "CLOUDPACS", "authorized_calling_ae": "PROBE_A",
                                 "tls": True, "client_certificate": True, "identity": "username_passcode"}
    assert record["expected"] == "an unknown calling AE is rejected"
    assert record["outcome"] == "defence held"
    assert record["verdict"] == "pass"
    assert record["severity"] == "high"
    assert record["evidence"] == "what came back"
    assert TIME.match(record["time"])


def test_audit_finding_that_did_not_pass_fails_and_says_the_defence_did_not_hold():
    [record] = audit(audit_result(endpoint("pacs", finding("open_calling_ae", False))))
    assert (record["verdict"], record["outcome"]) == ("fail", "defence did not hold")


def test_audit_inconclusive_finding_stays_inconclusive_and_never_passes():
    [record] = audit(audit_result(endpoint("pacs", finding("open_calling_ae", False, verdict="inconclusive"))))
    assert (record["verdict"], record["outcome"]) == ("inconclusive", "could not tell")


def test_audit_unknown_target_and_check_fall_back_to_default_site_and_words():
    [record] = audit(audit_result(endpoint("elsewhere", finding("plain_beside_tls", True))), targets={})
    assert record["site"] == "default"
    assert record["expected"] == "the defence holds"


def test_audit_without_tls_presents_no_client_certificate_and_defaults_the_calling_ae():
    [record] = audit(audit_result(endpoint("pacs", finding("authorized", True))), calling_ae="",
                     probe_tls=None, probe_identity=None)
    assert record["request"]["tls"] is False
    assert record["request"]["client_certificate"] is False
    assert record["request"]["authorized_calling_ae"] == "DICOMSEC-PROBE"
    assert record["request"]["identity"] == "none"


def test_audit_tls_endpoint_without_a_probe_certificate_records_none_presented():
    [record] = audit(audit_result(endpoint("pacs", finding("authorized", True), tls="yes")),
                     probe_tls={"enabled": True, "ca_file": "/etc/p/ca.crt"})
    assert record["request"]["tls"] is True
    assert record["request"]["client_certificate"] is False


def test_audit_unreachable_endpoint_is_the_goal_where_this_position_must_be_refused():
    [record] = audit(audit_result(endpoint("pacs", finding("reachable", False))), unwelcome=["pacs"])
    assert record["verdict"] == "pass"
    assert record["outcome"].startswith("denied: unreachable from this position")


def test_audit_unreachable_endpoint_fails_where_this_position_is_welcome():
    [record] = audit(audit_result(endpoint("pacs", finding("reachable", False))), unwelcome=["other"])
    assert record["verdict"] == "fail"


def test_audit_refused_authorized_association_passes_where_this_position_must_be_refused():
    [record] = audit(audit_result(endpoint("pacs", finding("authorized", False))), unwelcome=["pacs"])
    assert record["verdict"] == "pass"
    assert record["outcome"] == "denied: the authorized association was refused from this position, as it should be"
    assert record["expected"].startswith("the association this position presents is refused")


def test_audit_accepted_authorized_association_fails_where_this_position_must_be_refused():
    [record] = audit(audit_result(endpoint("pacs", finding("authorized", True))), unwelcome=["pacs"])
    assert record["verdict"] == "fail"
    assert record["outcome"] == "accepted from a position that must be refused"


def test_audit_other_findings_of_an_unwelcome_endpoint_keep_their_own_verdict():
    [record] = audit(audit_result(endpoint("pacs", finding("open_calling_ae", False))), unwelcome=["pacs"])
    assert record["verdict"] == "fail"


def test_audit_records_follow_endpoints_and_findings_in_order():
    records = audit(audit_result(endpoint("pacs", finding("reachable", True), finding("authorized", True)),
                                 endpoint("pacs-b", finding("reachable", True))))
    assert [(r["target"], r["control"]) for r in records] == [("pacs", "reachable"), ("pacs", "authorized"),
                                                              ("pacs-b", "reachable")]


def test_audit_result_without_endpoints_gives_no_records():
    assert audit({"failed": True, "msg": "endpoints[0].host is required"}) == []


def test_audit_result_that_is_not_a_mapping_is_an_error():
    with pytest.raises(AnsibleFilterError, match="dicom_audit result must be a mapping"):
        audit(["not", "a", "result"])


def check(**overrides):
    item = {"site": "cloud", "control": "authorized_store", "kind": "authorized_store", "target": "site-cloud-gw",
            "pacs": "site-cloud-pacs", "host": "198.18.20.78", "port": 11112, "calling_ae": "PROBE_R",
            "called_ae": "CLOUDPACS", "dimse": "store", "via": "gateway", "tls": True, "cert": True,
            "identity": "own", "expected": "the instance is stored", "reject": None,
            "tls_refusal_fails": True, "tls_must_fail": False}
    item.update(overrides)
    return item


def registered(item, **result):
    result.setdefault("failed", False)
    result["item"] = item
    return result


def associate(*results, **kwargs):
    args = dict(position="site-remote", role="authorized", probe_tls=PROBE_TLS, probe_identity=IDENTITY)
    args.update(kwargs)
    return association_records(list(results), **args)


def test_association_record_says_what_was_tried_and_what_came_back():
    [record] = associate(registered(check(), outcome="accepted", tls="TLSv1.3",
                                    operation={"status": 0}, msg="C-STORE stored the instance"))
    assert record["site"] == "cloud"
    assert record["control"] == "authorized_store"
    assert record["position"] == "site-remote"
    assert record["target"] == "site-cloud-gw"
    assert record["address"] == "198.18.20.78:11112"
    assert record["request"] == {"calling_ae": "PROBE_R", "called_ae": "CLOUDPACS", "dimse": "store",
                                 "via": "gateway to site-cloud-pacs", "tls": True, "client_certificate": True,
                                 "identity": "username_passcode"}
    assert record["expected"] == "the instance is stored"
    assert record["association"] == {"outcome": "accepted", "reject": None, "abort": None, "tls": "TLSv1.3",
                                     "operation": {"status": 0}, "msg": "C-STORE stored the instance"}
    assert record["verdict"] == "pass"
    assert record["evidence"] == "C-STORE stored the instance"
    assert TIME.match(record["time"])


def test_association_check_the_module_failed_fails():
    [record] = associate(registered(check(), outcome="rejected", failed=True, msg="expected accepted"))
    assert record["verdict"] == "fail"


def test_association_without_an_outcome_is_inconclusive_not_a_pass():
    [record] = associate(registered(check(), failed=True, msg="calling_ae is not a valid AE title"))
    assert record["verdict"] == "inconclusive"
    assert record["association"]["outcome"] is None


def test_association_tls_refusal_of_valid_credentials_fails_and_says_why():
    [record] = associate(registered(check(expected="denied"), outcome="tls_failed", msg="handshake failed"))
    assert record["verdict"] == "fail"
    assert record["evidence"] == (
        "refused in the TLS handshake although its credentials are valid: dicomsec_probe_tls of site-remote is not"
        " accepted by site-cloud-gw, so its address was not what was refused; handshake failed")


def test_association_tls_refusal_passes_where_it_is_the_control_at_work():
    [record] = associate(registered(check(cert=False, tls_refusal_fails=False, tls_must_fail=True),
                                    outcome="tls_failed", msg="certificate required"))
    assert record["verdict"] == "pass"
    assert record["request"]["client_certificate"] is False


def test_association_other_refusal_fails_where_tls_must_refuse():
    [record] = associate(registered(check(cert=False, tls_refusal_fails=False, tls_must_fail=True),
                                    outcome="rejected", msg="rejected 1/1/3"))
    assert record["verdict"] == "fail"
    assert record["evidence"].startswith("denied, but not in the TLS handshake (rejected)")


def test_association_reject_with_the_expected_code_passes():
    [record] = associate(registered(check(reject=[1, 2, 1], identity="none"), outcome="rejected",
                                    reject={"result": 1, "source": 2, "reason": 1}, msg="rejected"))
    assert record["verdict"] == "pass"
    assert record["request"]["identity"] == "none"


def test_association_reject_with_another_code_fails_and_names_both():
    [record] = associate(registered(check(reject=[1, 2, 1], identity="wrong"), outcome="rejected",
                                    reject={"result": 1, "source": 1, "reason": 3}, msg="rejected"))
    assert record["verdict"] == "fail"
    assert record["evidence"] == "rejected with 1/1/3, not 1/2/1; rejected"
    assert record["request"]["identity"] == "username_passcode (wrong)"


def test_association_direct_check_says_direct_and_plain_presents_no_certificate():
    [record] = associate(registered(check(via="direct", tls=False), outcome="refused", msg="refused"))
    assert record["request"]["via"] == "direct"
    assert record["request"]["tls"] is False
    assert record["request"]["client_certificate"] is False


def test_association_records_hold_no_secret():
    records = associate(registered(check(), outcome="accepted", msg="ok"),
                        registered(check(identity="wrong"), outcome="rejected", failed=True, msg="no"))
    text = json.dumps(records)
    assert PASSCODE not in text
    assert PROBE_TLS["key_file"] not in text


def test_association_result_without_its_check_is_an_error():
    with pytest.raises(AnsibleFilterError, match=r"results\[0\] is not a registered loop result"):
        associate({"outcome": "accepted"})
