"""atna_audit refuses bad input with a clear error before it changes anything.

Each case applies the role to localhost in check mode with one bad variable, limited to its
checks (argument_specs, then tasks/validate.yml), and checks that the play stops with a message
naming the variable. Each refusal has an accepted twin: the same input made valid passes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from role_validation import run_batch


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    for name, mode in (("ca.pem", 0o644), ("gateway.pem", 0o644), ("gateway.key", 0o600),
                       ("group.key", 0o640), ("open.key", 0o644)):
        (root / name).write_text("placeholder\n")
        (root / name).chmod(mode)
    (root / "dir.pem").mkdir()
    return root


def valid(root):
    return {"atna_audit_repository": {"host": "arr.hospital.example", "ca": str(root / "ca.pem"),
                                      "certificate": str(root / "gateway.pem"), "key": str(root / "gateway.key")},
            "atna_audit_source_id": "DICOM-GW-1"}


def repo(root, **changes):
    base = valid(root)
    return {**base, "atna_audit_repository": {**base["atna_audit_repository"], **changes}}


def cases(root):
    return {
        "valid": ({}, None),
        "repository_is_an_address": (repo(root, host="198.18.40.5"), None),
        "repository_host_with_a_space": (repo(root, host="arr one"), 'atna_audit_repository.host "arr one" is not an IP address or a DNS name'),
        "repository_host_bad_address": (repo(root, host="198.18.40.300"), "is not an IP address or a DNS name"),
        "repository_port_70000": (repo(root, port=70000), "atna_audit_repository.port 70000 must be 1-65535"),
        "repository_port_6515": (repo(root, port=6515), None),
        "ca_missing": (repo(root, ca=str(root / "none.pem")), "atna_audit_repository.ca (%s) does not exist" % (root / "none.pem")),
        "certificate_missing": (repo(root, certificate=str(root / "none.pem")), "atna_audit_repository.certificate"),
        "key_missing": (repo(root, key=str(root / "none.key")), "atna_audit_repository.key (%s) does not exist" % (root / "none.key")),
        "certificate_is_a_directory": (repo(root, certificate=str(root / "dir.pem")), "is not a regular file"),
        "key_readable_by_all": (repo(root, key=str(root / "open.key")), "has mode 0644: a private key must be 0600 or 0640"),
        "key_readable_by_group": (repo(root, key=str(root / "group.key")), None),
        "relative_ca_path": (repo(root, ca="ca.pem"), 'atna_audit_repository.ca "ca.pem" is not an absolute path'),
        "quote_in_key_path": (repo(root, key='/etc/ssl/a"b.key'), "atna_audit_repository.key"),
        "permitted_peer_with_a_space": (repo(root, permitted_peers=["arr one"]), 'atna_audit_repository.permitted_peers: "arr one" is not a certificate name'),
        "permitted_peer_wildcard": (repo(root, permitted_peers=["*.hospital.example"]), None),
        "source_id_with_a_newline": ({"atna_audit_source_id": "GW\n1"}, "atna_audit_source_id"),
        "source_id_with_xml_characters": ({"atna_audit_source_id": "GW <1> & \"2\""}, None),
        "site_id_too_long": ({"atna_audit_enterprise_site_id": "x" * 257}, "atna_audit_enterprise_site_id"),
        "syslog_hostname_with_a_space": ({"atna_audit_syslog_hostname": "gw 1"}, 'atna_audit_syslog_hostname "gw 1" is not a host name'),
        "app_name_too_long": ({"atna_audit_app_name": "A" * 49}, "atna_audit_app_name"),
        "app_name_of_48": ({"atna_audit_app_name": "A" * 48}, None),
        "decision_log_relative": ({"atna_audit_decision_log": "dicom-gate.log"}, 'atna_audit_decision_log "dicom-gate.log" is not an absolute path'),
        "queue_disk_space_not_a_size": ({"atna_audit_queue_max_disk_space": "lots"}, 'atna_audit_queue_max_disk_space "lots" is not a size'),
        "queue_disk_space_512m": ({"atna_audit_queue_max_disk_space": "512m"}, None),
        "queue_too_small": ({"atna_audit_queue_size": 10}, "atna_audit_queue_size (10) must be at least 100"),
        "resume_interval_zero": ({"atna_audit_resume_interval": 0}, "atna_audit_resume_interval (0) must be 1-3600 seconds"),
        "identity_reason_with_a_quote": ({"atna_audit_identity_reasons": ['bad"reason']},
                                         'atna_audit_identity_reasons: "bad\\"reason" is not a decision-log reason'),
        # Caught by meta/argument_specs.yml at the role's entry, naming the variable.
        "no_repository": ({"atna_audit_repository": {}}, "atna_audit_repository"),
        "repository_without_key": ({"atna_audit_repository": {"host": "arr.hospital.example", "ca": "/a", "certificate": "/b"}},
                                   "missing required arguments: key found in atna_audit_repository"),
        "msgid_unknown": ({"atna_audit_msgid": "ATNA"}, "atna_audit_msgid"),
        "source_type_10": ({"atna_audit_source_type_code": "10"}, "atna_audit_source_type_code"),
        "tls_1_1": ({"atna_audit_tls_min_version": "TLSv1.1"}, "atna_audit_tls_min_version"),
        "misspelled_repository_key": (repo(root, hots="x"), "hots"),
    }


@pytest.fixture(scope="module")
def table(tls_files):
    return cases(tls_files)


@pytest.fixture(scope="module")
def results(tmp_path_factory, tls_files, table):
    base = valid(tls_files)
    return run_batch(tmp_path_factory.mktemp("validate"), "atna_audit",
                     {name: {**base, **overrides} for name, (overrides, _err) in table.items()},
                     tags="atna_audit_validate")


NAMES = list(cases(Path("/nonexistent")).keys())


@pytest.mark.parametrize("name", NAMES)
def test_each_input_is_refused_naming_the_variable_or_passes(results, table, name):
    res = results[name]
    _overrides, error = table[name]
    if error is None:
        assert res["rc"] == 0, res["out"]
    else:
        assert res["rc"] != 0, res["out"]
        assert error in res["out"], res["out"]
        assert res["changed"] in (0, None), res["out"]
