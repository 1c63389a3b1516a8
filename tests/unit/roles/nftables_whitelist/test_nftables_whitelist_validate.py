"""nftables_whitelist refuses bad input with a clear error before it changes anything.

Each case runs the role's checks on localhost in check mode with one change to
a valid inventory: through the role's `validate` entry point (its argument
spec, then tasks/validate.yml), and for a few through `main`, which must stop
at the same check. Every refusal has an accepted twin next to it: the nearest
input that is valid, which must pass.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from role_validation import failed_tasks, run_all, run_batch, validate_tasks

REPO = Path(__file__).resolve().parents[4]

SERVICE = {"name": "dicom", "ports": [104, 11112], "sources": ["modalities"]}
VALID = {
    "nftables_whitelist_source_sets": {"modalities": ["198.18.10.31", "2001:db8:d1c0:10::31", "198.18.12.0/24"]},
    "nftables_whitelist_services": [SERVICE],
    "nftables_whitelist_management_sources": ["198.18.40.0/24", "2001:db8:d1c0:40::/64"],
}


def with_sources(*entries, **extra):
    return {"nftables_whitelist_source_sets": {"modalities": list(entries)}, **extra}


def with_service(**changes):
    return {"nftables_whitelist_services": [{**SERVICE, **changes}]}


FORWARD = {"chain": "forward", "destinations": ["198.18.10.0/24", "2001:db8:d1c0:10::/64"]}

# name -> (variables over VALID, text the error must contain or None: must pass)
CASES = {
    "valid": ({}, None),
    # Addresses and prefixes, read by ipaddress through the nft_address_sets filter.
    "source_octet_out_of_range": (
        with_sources("198.18.10.31", "198.18.10.300"),
        "nftables_whitelist_source_sets.modalities: not an address or prefix: '198.18.10.300'"),
    "source_with_host_bits_set": (with_sources("198.18.10.1/24"), "not an address or prefix: '198.18.10.1/24' (has host bits set)"),
    "source_of_colons_only": (with_sources(":::::"), "not an address or prefix: ':::::'"),
    "source_with_two_double_colons": (with_sources("2001:db8::1::2"), "not an address or prefix: '2001:db8::1::2'"),
    "source_host_name": (with_sources("ct-1.example"), "not an address or prefix: 'ct-1.example'"),
    "source_with_zone": (with_sources("fe80::31%eth0"), "zone index"),
    "source_prefix_with_host_bits_clear": (with_sources("198.18.10.0/24", "2001:db8:d1c0:10::/64"), None),
    "set_name_starting_with_a_digit": (
        {"nftables_whitelist_source_sets": {"1st": ["198.18.10.31"]},
         "nftables_whitelist_services": [{**SERVICE, "sources": ["1st"]}]},
        'nftables_whitelist_source_sets: "1st" is not a usable name'),
    "set_name_with_letters_digits_underscore": (
        {"nftables_whitelist_source_sets": {"first_1": ["198.18.10.31"]},
         "nftables_whitelist_services": [{**SERVICE, "sources": ["first_1"]}]}, None),
    # A whitelist of everyone.
    "source_every_ipv4_address": (
        with_sources("0.0.0.0/0"), "nftables_whitelist_source_sets.modalities covers every IPv4 address"),
    "source_every_ipv6_address": (
        with_sources("198.18.10.31", "::/0"), "nftables_whitelist_source_sets.modalities covers every IPv6 address"),
    "source_halves_that_merge_into_everything": (
        with_sources("0.0.0.0/1", "128.0.0.0/1"), "its entries merge into 0.0.0.0/0"),
    "source_every_address_of_both_families": (
        with_sources("0.0.0.0/0", "::/0"), "covers every IPv4 and every IPv6 address"),
    "source_half_the_address_space": (with_sources("0.0.0.0/1", "::/1"), None),
    "source_everyone_said_explicitly": (with_sources("0.0.0.0/0", "::/0", nftables_whitelist_allow_any_source=True), None),
    # Management.
    "no_management_source": (
        {"nftables_whitelist_management_sources": []},
        "nftables_whitelist_management_sources is empty while nftables_whitelist_management_enabled is true"),
    "no_management_source_with_management_off": (
        {"nftables_whitelist_management_sources": [], "nftables_whitelist_management_enabled": False}, None),
    "no_management_source_when_removing_the_table": (
        {"nftables_whitelist_management_sources": [], "nftables_whitelist_state": "absent"}, None),
    "policy_drop_without_management": (
        {"nftables_whitelist_input_policy": "drop", "nftables_whitelist_management_enabled": False},
        "nftables_whitelist_input_policy is drop while nftables_whitelist_management_enabled is false"),
    "policy_drop_with_management": ({"nftables_whitelist_input_policy": "drop"}, None),
    "management_source_with_host_bits_set": (
        {"nftables_whitelist_management_sources": ["198.18.40.1/24"]},
        "nftables_whitelist_management_sources: not an address or prefix: '198.18.40.1/24'"),
    "management_port_0": ({"nftables_whitelist_management_ports": [22, 0]}, "nftables_whitelist_management_ports: 0 is not a port"),
    "management_port_65536": ({"nftables_whitelist_management_ports": [65536]}, "65536 is not a port (1-65535)"),
    "management_port_65535": ({"nftables_whitelist_management_ports": [65535]}, None),
    # Services.
    "duplicate_service_names": (
        {"nftables_whitelist_services": [SERVICE, {**SERVICE, "ports": [4242]}]},
        "nftables_whitelist_services: each name may appear once; repeated: dicom"),
    "distinct_service_names": ({"nftables_whitelist_services": [SERVICE, {**SERVICE, "name": "dicom_2", "ports": [4242]}]}, None),
    "service_name_in_capitals": (with_service(name="DICOM"), "name must be lowercase letters, digits, underscore"),
    "service_name_of_25_characters": (with_service(name="d" * 25), "name must be lowercase letters"),
    "service_name_of_24_characters": (with_service(name="d" * 24), None),
    "service_without_ports": (with_service(ports=[]), "nftables_whitelist_services[0] (dicom): ports is empty"),
    "service_port_out_of_range": (with_service(ports=[104, 70000]), "ports [70000] are not ports (1-65535)"),
    "service_port_0": (with_service(ports=[0]), "ports [0] are not ports"),
    "service_reversed_range": (with_service(ports=["200-100"]), "ports ['200-100'] are not ports"),
    "service_port_word": (with_service(ports=["dicom"]), "ports ['dicom'] are not ports"),
    "service_port_range": (with_service(ports=["100-200", 65535]), None),
    "service_without_sources": (with_service(sources=[]), "sources is empty: a protected service needs at least one whitelist"),
    "service_with_unknown_source": (
        with_service(sources=["modalities", "nobody"]), "sources ['nobody'] are not in nftables_whitelist_source_sets"),
    "forward_service_without_destinations": (
        with_service(chain="forward"), "a forward service needs destinations (the protected segment)"),
    "forward_service_with_destinations": (with_service(**FORWARD), None),
    "forward_destination_with_host_bits_set": (
        with_service(chain="forward", destinations=["198.18.10.1/24"]),
        "nftables_whitelist_services[0].destinations: not an address or prefix: '198.18.10.1/24'"),
    # On input, destinations name the host's own addresses the service answers on.
    "input_service_answering_on_one_address": (with_service(destinations=["198.18.10.30"]), None),
    "input_destination_of_colons_only": (
        with_service(destinations=[":::::"]), "nftables_whitelist_services[0].destinations: not an address or prefix"),
    "rate_limit_in_words": (with_service(rate_limit="fast"), "rate_limit must look like 20/second"),
    "rate_limit_of_zero": (with_service(rate_limit="0/second"), "rate_limit must look like 20/second"),
    "rate_limit_per_second": (with_service(rate_limit="20/second"), None),
    "connection_limit_0": (with_service(connection_limit=0), "connection_limit must be at least 1"),
    "connection_limit_1": (with_service(connection_limit=1), None),
    "interface_with_a_space": (with_service(interfaces=["eth0 lan"]), "interfaces must be interface names"),
    "interface_of_16_characters": (with_service(interfaces=["e" * 16]), "interfaces must be interface names"),
    "interface_names": (with_service(interfaces=["eth0", "ipsec0", "br-lan.10"]), None),
    # Logging and the table's name.
    "log_prefix_with_a_space": (
        {"nftables_whitelist_log_prefix": "dicom refused"},
        'nftables_whitelist_log_prefix "dicom refused" must be 1-40 letters, digits, dash or underscore'),
    "log_prefix_of_41_characters": ({"nftables_whitelist_log_prefix": "p" * 41}, "must be 1-40 letters"),
    "log_prefix_of_40_characters": ({"nftables_whitelist_log_prefix": "p" * 40}, None),
    "log_rate_in_words": ({"nftables_whitelist_log_rate": "often"}, 'nftables_whitelist_log_rate "often" must look like 10/minute'),
    "log_rate_per_hour": ({"nftables_whitelist_log_rate": "60/hour"}, None),
    "log_group_out_of_range": ({"nftables_whitelist_log_group": 65536}, "nftables_whitelist_log_group 65536 must be 0-65535"),
    "log_group_65535": ({"nftables_whitelist_log_group": 65535}, None),
    "table_name_starting_with_a_digit": (
        {"nftables_whitelist_table": "1table"}, 'nftables_whitelist_table "1table" must be a letter, then letters'),
    "table_name_with_a_dash": ({"nftables_whitelist_table": "pacs-pins"}, 'nftables_whitelist_table "pacs-pins" must be'),
    "table_name_of_letters_and_underscore": ({"nftables_whitelist_table": "pacs_identity_pins"}, None),
    # Types and choices: meta/argument_specs.yml, at the entry point, naming the variable.
    "unknown_refused_action": (
        {"nftables_whitelist_refused_action": "ignore"}, "value of nftables_whitelist_refused_action must be one of: drop, reject"),
    "unknown_state": ({"nftables_whitelist_state": "gone"}, "value of nftables_whitelist_state must be one of: present, absent"),
    "service_without_ports_key": (
        {"nftables_whitelist_services": [{"name": "dicom", "sources": ["modalities"]}]},
        "missing required arguments: ports found in nftables_whitelist_services"),
    "allow_any_source_not_a_bool": (
        {"nftables_whitelist_allow_any_source": "perhaps"}, "nftables_whitelist_allow_any_source"),
}

# The role's main entry point runs the same checks first and stops there. (Its
# accepted twins are the cases above: valid input through `main` would go on to
# read this machine's firewall, which the lab scenarios do on their own hosts.)
MAIN_CASES = {
    "main_source_of_colons_only": (with_sources(":::::"), "not an address or prefix: ':::::'"),
    "main_source_every_ipv4_address": (with_sources("0.0.0.0/0"), "covers every IPv4 address"),
    "main_no_management_source": ({"nftables_whitelist_management_sources": []}, "nftables_whitelist_management_sources is empty"),
    "main_unknown_state": ({"nftables_whitelist_state": "gone"}, "value of nftables_whitelist_state must be one of"),
}

PLAY = """\
- name: Check nftables_whitelist input
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Run the role's {entry} entry point
      ansible.builtin.import_role:
        name: nftables_whitelist
        tasks_from: {entry}
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("validate")
    batches = run_all({entry: functools.partial(
        run_batch, tmp / entry, "nftables_whitelist", {name: {**VALID, **overrides} for name, (overrides, _err) in cases.items()},
        play=PLAY.format(entry=entry)) for entry, cases in (("validate", CASES), ("main", MAIN_CASES))})
    return {**batches["validate"], **batches["main"]}


ALL = {**CASES, **MAIN_CASES}


@pytest.mark.parametrize("name", [n for n, (_vars, err) in CASES.items() if err is None])
def test_valid_input_passes_validation(results, name):
    res = results[name]
    assert res["rc"] == 0, res["out"]
    assert res["changed"] == 0, res["out"]


@pytest.mark.parametrize("name", [n for n, (_vars, err) in ALL.items() if err is not None])
def test_bad_input_is_refused_with_a_clear_error_and_no_change(results, name):
    res = results[name]
    assert res["rc"] != 0, res["out"]
    assert ALL[name][1] in res["out"], res["out"]
    assert res["changed"] == 0, res["out"]


def test_every_check_of_validate_yml_is_made_to_fail_by_some_case(results):
    """No failure message of tasks/validate.yml goes untested: each check (the
    parsing filters and every assert) is where at least one refused case stops."""
    failed_in = failed_tasks(results, ALL)
    untested = [t["name"] for t in validate_tasks("nftables_whitelist")
                if f"nftables_whitelist : {t['name']}" not in failed_in]
    assert not untested, untested
