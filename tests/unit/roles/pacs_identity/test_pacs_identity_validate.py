"""pacs_identity refuses bad input with a clear error before it changes anything.

Each case applies the role to localhost with one bad variable and checks that
the play stops in the role's argument validation or in tasks/validate.yml,
with a message naming the problem, and with nothing changed. Each refusal has
an accepted twin: the same input made valid passes.
"""

from __future__ import annotations

from pathlib import Path
import re

import pytest
from role_validation import failed_tasks, run_batch, validate_tasks
import yaml

REPO = Path(__file__).resolve().parents[4]
STRONG = "correct-horse-battery-staple-42"

MODALITY = {"name": "ct-1", "aet": "CT1", "host": "198.18.10.60", "port": 104, "allow": ["echo", "store"]}
VALID = {
    "pacs_identity_aet": "LABPACS",
    "pacs_identity_modalities": [MODALITY, {**MODALITY, "name": "mr-1", "aet": "MR1", "host": "198.18.10.61"}],
    "pacs_identity_rest_users": [{"name": "radiology", "password": STRONG}],
}
PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"


def with_modality(**changes):
    return {**VALID, "pacs_identity_modalities": [{**MODALITY, **changes}]}


# name -> (variables over VALID, text the error must contain; None: must pass)
CASES = {
    "valid": ({}, None),
    "aet_of_16_characters": ({"pacs_identity_aet": "A" * 16}, None),
    "aet_of_17_characters": ({"pacs_identity_aet": "A" * 17}, "is not a DICOM AE title"),
    "aet_with_backslash": ({"pacs_identity_aet": "PACS\\1"}, "is not a DICOM AE title"),
    "aet_with_control_character": ({"pacs_identity_aet": "PACS\x01"}, "is not a DICOM AE title"),
    "aet_of_spaces_only": ({"pacs_identity_aet": "    "}, "is not a DICOM AE title"),
    "modality_aet_too_long": (with_modality(aet="MODALITY-TITLE-17"), "must be 1-16 characters"),
    "modality_aet_with_backslash": (with_modality(aet="CT\\1"), "must be 1-16 characters"),
    "modality_aet_with_newline": (with_modality(aet="CT\n1"), "must be 1-16 characters"),
    "modality_name_with_a_space": (with_modality(name="ct 1"), "name must match"),
    "modality_port_0": (with_modality(port=0), "port 0 must be 1-65535"),
    "modality_port_65536": (with_modality(port=65536), "port 65536 must be 1-65535"),
    "modality_port_65535": (with_modality(port=65535), None),
    "modality_host_is_a_name": (with_modality(host="ct-1.example"), "must be an IP address in canonical form"),
    "modality_ipv6_host": (with_modality(host="2001:db8:d1c0:10::60"), None),
    # Both passed the pattern the role used before ipaddress read the hosts.
    "modality_host_of_colons_only": (with_modality(host=":::::"), 'host ":::::" must be an IP address'),
    "modality_host_with_two_double_colons": (
        with_modality(host="2001:db8::1::2"), 'host "2001:db8::1::2" must be an IP address'),
    "modality_host_octet_out_of_range": (with_modality(host="198.18.10.256"), "must be an IP address"),
    "modality_host_with_a_zone": (with_modality(host="fe80::60%eth0"), "must be an IP address"),
    # Orthanc compares text: an upper-case or uncompressed spelling would never match the peer.
    "modality_host_not_canonical": (with_modality(host="2001:DB8:d1c0:10:0::60"), "in canonical form"),
    "duplicate_modality_aet": (
        {"pacs_identity_modalities": [MODALITY, {**MODALITY, "name": "ct-2", "aet": " ct1 ", "host": "198.18.10.61"}]},
        "Duplicate modality AE titles or names: CT1"),
    "duplicate_modality_name": (
        {"pacs_identity_modalities": [MODALITY, {**MODALITY, "aet": "CT2"}]},
        "Duplicate modality AE titles or names: ct-1"),
    "short_rest_password": (
        {"pacs_identity_rest_users": [{"name": "radiology", "password": "Sh0rt-pass"}]},
        "REST users radiology have weak passwords"),
    "default_rest_password": (
        {"pacs_identity_rest_users": [{"name": "orthanc", "password": "orthanc"}]},
        "REST users orthanc have weak passwords"),
    "rest_password_equal_to_user_name": (
        {"pacs_identity_rest_users": [{"name": "radiology-department", "password": "Radiology-Department"}]},
        "REST users radiology-department have weak passwords"),
    "duplicate_rest_users": (
        {"pacs_identity_rest_users": [{"name": "a", "password": STRONG}, {"name": "a", "password": STRONG + "x"}]},
        "user names are empty, repeated"),
    "rest_user_name_with_a_colon": (
        {"pacs_identity_rest_users": [{"name": "radio:logy", "password": STRONG}]}, "user names are empty, repeated"),
    "rest_user_name_with_a_space": (
        {"pacs_identity_rest_users": [{"name": "radio logy", "password": STRONG}]}, "user names are empty, repeated"),
    "rest_user_name_empty": (
        {"pacs_identity_rest_users": [{"name": "", "password": STRONG}]}, "user names are empty, repeated"),
    "tls_without_certificate": ({"pacs_identity_tls_enabled": True}, "pacs_identity_tls_enabled is true"),
    "tls_without_trusted_ca": (
        {"pacs_identity_tls_enabled": True, "pacs_identity_tls_certificate": PEM_CERT,
         "pacs_identity_tls_private_key": PEM_KEY}, "pacs_identity_tls_enabled is true"),
    "tls_complete": (
        {"pacs_identity_tls_enabled": True, "pacs_identity_tls_certificate": PEM_CERT,
         "pacs_identity_tls_private_key": PEM_KEY, "pacs_identity_tls_trusted_ca": PEM_CERT}, None),
    "gateway_is_a_name": (
        {"pacs_identity_gateway_address": "gateway.example"},
        'pacs_identity_gateway_address "gateway.example" must be an IP address in canonical form'),
    "gateway_of_colons_only": (
        {"pacs_identity_gateway_address": ":::::"}, 'pacs_identity_gateway_address ":::::" must be an IP address'),
    "gateway_not_canonical": (
        {"pacs_identity_gateway_address": "2001:db8:d1c0:10:0:0:0:55"}, "must be an IP address in canonical form"),
    "gateway_ipv4": ({"pacs_identity_gateway_address": "198.18.10.55"}, None),
    "gateway_ipv6": ({"pacs_identity_gateway_address": "2001:db8:d1c0:10::55"}, None),
    "listen_address_is_a_name": (
        {"pacs_identity_rest_listen_address": "pacs.example"},
        'pacs_identity_rest_listen_address "pacs.example" must be an IP address or empty'),
    "listen_address_with_two_double_colons": (
        {"pacs_identity_rest_listen_address": "2001:db8::1::2"}, "must be an IP address or empty"),
    # Only a firewall rule holds it, and nft reads any spelling.
    "listen_address_in_any_spelling": ({"pacs_identity_rest_listen_address": "2001:DB8:d1c0:10::52"}, None),
    "gateway_and_listen_address": (
        {"pacs_identity_gateway_address": "198.18.10.55", "pacs_identity_rest_listen_address": "198.18.10.52"}, None),
    "dicom_port_0": ({"pacs_identity_dicom_port": 0}, "must be distinct ports (1-65535)"),
    "rest_port_70000": ({"pacs_identity_rest_port": 70000}, "must be distinct ports (1-65535)"),
    "dicom_port_equal_to_rest_port": (
        {"pacs_identity_dicom_port": 8042, "pacs_identity_rest_port": 8042}, "must be distinct ports"),
    # A pinned port that is also a management port could shut the operators out.
    "pinned_dicom_port_is_a_management_port": (
        {"pacs_identity_gateway_address": "198.18.10.55", "pacs_identity_dicom_port": 22},
        "22 is also a management port (nftables_whitelist_management_ports)"),
    "pinned_rest_port_is_a_management_port": (
        {"pacs_identity_rest_listen_address": "198.18.10.52", "pacs_identity_rest_port": 2222,
         "nftables_whitelist_management_ports": [22, 2222]}, "2222 is also a management port"),
    "unpinned_dicom_port_22": ({"pacs_identity_dicom_port": 22}, None),
    # The pins are an nftables_whitelist table: its own checks refuse what the
    # inventory gives it, before the PACS's first change.
    "pins_with_a_bad_log_rate_from_the_inventory": (
        {"pacs_identity_gateway_address": "198.18.10.55", "nftables_whitelist_log_rate": "fast"},
        'nftables_whitelist_log_rate "fast" must look like 10/minute'),
    "pins_with_an_unknown_log_backend_from_the_inventory": (
        {"pacs_identity_gateway_address": "198.18.10.55", "nftables_whitelist_log_backend": "syslog"},
        "value of nftables_whitelist_log_backend must be one of"),
    "pins_with_nflog_from_the_inventory": (
        {"pacs_identity_gateway_address": "198.18.10.55", "nftables_whitelist_log_backend": "nflog"}, None),
    "extra_option_reopens_the_pacs": (
        {"pacs_identity_orthanc_extra_options": {"DicomAlwaysAllowEcho": True, "StableAge": 30}},
        "may not set DicomAlwaysAllowEcho"),
    "harmless_extra_option": ({"pacs_identity_orthanc_extra_options": {"StableAge": 30}}, None),
    # Caught by meta/argument_specs.yml at the role's entry, naming the variable.
    "unknown_permission": (
        with_modality(allow=["echo", "delete"]), "Got no match for: delete found in pacs_identity_modalities"),
    "unknown_backend": ({"pacs_identity_backend": "pacsman"}, "value of pacs_identity_backend must be one of"),
    "dcm4chee_without_bind_password": (
        {"pacs_identity_backend": "dcm4chee"}, "pacs_identity_dcm4chee_bind_password must be set"),
    "dcm4chee_with_bad_network_ae": (
        {"pacs_identity_backend": "dcm4chee", "pacs_identity_dcm4chee_bind_password": STRONG,
         "pacs_identity_dcm4chee_network_aes": ["DCM4CHEE", "DCM\\4"]}, "must be distinct DICOM AE titles"),
    "dcm4chee_with_repeated_network_ae": (
        {"pacs_identity_backend": "dcm4chee", "pacs_identity_dcm4chee_bind_password": STRONG,
         "pacs_identity_dcm4chee_network_aes": ["DCM4CHEE", "DCM4CHEE"]}, "must be distinct DICOM AE titles"),
    "dcm4chee_complete": ({"pacs_identity_backend": "dcm4chee", "pacs_identity_dcm4chee_bind_password": STRONG}, None),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    # The role's entry point, limited to its checks: argument_specs, then
    # tasks/validate.yml (the tag). The play stops there, so this machine is not touched.
    return run_batch(tmp_path_factory.mktemp("validate"), "pacs_identity",
                     {name: {**VALID, **overrides} for name, (overrides, _error) in CASES.items()},
                     tags="pacs_identity_validate")


def test_each_case_output_holds_its_own_result_only(results):
    # The cases run as hosts of one play: a case's output must not take in another's failure.
    # (ansible-core prints an "[ERROR]" block once for cases that fail with the same text; the
    # failure line of each holds its message.)
    assert "FAILED!" not in results["valid"]["out"] and "[ERROR]" not in results["valid"]["out"]
    for name, (_vars, err) in CASES.items():
        if err is not None:
            out = results[name]["out"]
            assert out.count("[ERROR]: Task failed") <= 1, out
            assert len(re.findall(r"^fatal: \[localhost\]", out, re.M)) <= 1, out
            assert re.search(r"^(?:fatal|failed): \[localhost\]", out, re.M), out


@pytest.mark.parametrize("name", [n for n, (_vars, err) in CASES.items() if err is None])
def test_valid_input_passes_validation(results, name):
    res = results[name]
    assert res["rc"] == 0, res["out"]


@pytest.mark.parametrize("name", [n for n, (_vars, err) in CASES.items() if err is not None])
def test_bad_input_is_refused_with_a_clear_error_and_no_change(results, name):
    res = results[name]
    assert res["rc"] != 0, res["out"]
    assert CASES[name][1] in res["out"], res["out"]
    assert res["changed"] == 0, res["out"]


def test_rest_passwords_never_appear_in_the_output(results):
    for name in ("short_rest_password", "default_rest_password", "rest_password_equal_to_user_name", "valid"):
        out = results[name]["out"]
        assert "Sh0rt-pass" not in out and STRONG not in out and "Radiology-Department" not in out


def test_every_check_of_validate_yml_is_made_to_fail_by_some_case(results):
    """No failure message of tasks/validate.yml goes untested. The firewall pins'
    checks are nftables_whitelist's own, run from here: a case must fail in them."""
    failed_in = failed_tasks(results, CASES)
    untested = []
    for task in validate_tasks("pacs_identity"):
        if "ansible.builtin.include_role" in task:
            if not any(t and t.startswith("dicomsec.hardening.nftables_whitelist : ") for t in failed_in):
                untested.append(task["name"])
        elif f"pacs_identity : {task['name']}" not in failed_in:
            untested.append(task["name"])
    assert not untested, untested


def test_the_pins_are_checked_with_the_variables_they_are_applied_with():
    """validate.yml checks the firewall pins with the same variables firewall.yml applies."""
    def include_vars(path):
        tasks = yaml.safe_load((REPO / "roles" / "pacs_identity" / "tasks" / path).read_text())
        (task,) = [t for t in tasks if t.get("ansible.builtin.include_role", {}).get("name")
                   == "dicomsec.hardening.nftables_whitelist"]
        return task["vars"]

    assert include_vars("validate.yml") == include_vars("firewall.yml")
    assert include_vars("firewall.yml")["nftables_whitelist_management_enabled"] is False
    assert include_vars("firewall.yml")["nftables_whitelist_input_policy"] == "accept"
