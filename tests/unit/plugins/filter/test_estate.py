# -*- coding: utf-8 -*-
"""The estate model filter: what each host's roles get from sites, modalities, users and probes."""

from __future__ import annotations

import copy

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.dicomsec.hardening.plugins.filter.estate import estate_role_vars

PASSCODE = "lab-only-Estate4Rt9Xq2"  # synthetic

SITE_A = {
    "dicomsec_site": "site_a",
    "dicomsec_site_modalities": [
        {"name": "ct-1", "ae": "CT1", "addresses": ["198.18.10.71"], "services": ["echo", "store"]},
        {"name": "mr-1", "ae": "MR1", "addresses": ["2001:DB8:D1C0:10::0072"], "certificate_subject": "CN=mr-1"},
    ],
    "dicomsec_site_users": [{"name": "dr-remote", "passcode": PASSCODE, "calling_aes": ["CT1"]}],
}
SITE_B = {"dicomsec_site": "site_b",
          "dicomsec_site_modalities": [{"name": "us-1", "ae": "US1", "addresses": ["198.18.20.10"]}]}


def estate():
    hostvars = {
        "pacs-a": dict(SITE_A, ansible_host="198.18.10.70", pacs_identity_dicom_port=4242),
        "probe-a": dict(SITE_A, ansible_host="198.18.10.90", dicomsec_calling_ae="PROBEA",
                        dicomsec_probe_position="authorized"),
        "probe-wrong": dict(SITE_A, ansible_host="198.18.10.91", dicomsec_calling_ae="PROBEX",
                            dicomsec_probe_position="wrong_segment"),
        "pacs-b": dict(SITE_B, ansible_host="198.18.20.70"),
        "pacs-cloud": {"dicomsec_site": "cloud", "ansible_host": "198.18.30.70", "dicomsec_pacs_serves": ["site_a"],
                       "pacs_identity_dicom_port": 11112},
        "gw-cloud": {"dicomsec_site": "cloud", "ansible_host": "198.18.30.80", "dicomsec_gateway_for": ["pacs-cloud"]},
    }
    groups = {"all": list(hostvars), "pacs": ["pacs-a", "pacs-b", "pacs-cloud"], "dicom_gateways": ["gw-cloud"],
              "probes": ["probe-a", "probe-wrong"]}
    return hostvars, groups


def derive(host, hostvars=None, groups=None, **kwargs):
    default_vars, default_groups = estate()
    return estate_role_vars(hostvars or default_vars, host, groups or default_groups, **kwargs)


def test_a_pacs_registers_its_sites_modalities_and_authorized_probes_with_canonical_addresses():
    got = derive("pacs-a")
    assert got["pacs_identity_modalities"] == [
        {"name": "ct-1", "aet": "CT1", "host": "198.18.10.71", "port": 104, "allow": ["echo", "store"]},
        {"name": "mr-1", "aet": "MR1", "host": "2001:db8:d1c0:10::72", "port": 104, "allow": ["echo", "store"]},
        {"name": "probe-probe-a", "aet": "PROBEA", "host": "198.18.10.90", "port": 104, "allow": ["echo", "store"]},
    ]
    assert "pacs_identity_gateway_address" not in got


def test_a_probe_at_another_position_is_not_registered():
    aes = [m["aet"] for m in derive("pacs-a")["pacs_identity_modalities"]]
    assert "PROBEX" not in aes


def test_the_firewall_of_a_pacs_admits_its_modalities_addresses_on_its_dicom_port():
    got = derive("pacs-a")
    assert got["nftables_whitelist_source_sets"] == {
        "modalities": ["198.18.10.71", "198.18.10.90", "2001:db8:d1c0:10::72"]}
    assert got["nftables_whitelist_services"] == [{"name": "dicom", "ports": [4242], "sources": ["modalities"]}]


def test_a_pacs_of_another_site_gets_only_that_sites_modalities():
    got = derive("pacs-b")
    assert [m["aet"] for m in got["pacs_identity_modalities"]] == ["US1"]
    assert got["nftables_whitelist_source_sets"] == {"modalities": ["198.18.20.10"]}


def test_a_pacs_behind_a_gateway_is_pinned_to_it_and_its_firewall_admits_the_gateway_alone():
    got = derive("pacs-cloud")
    assert got["pacs_identity_gateway_address"] == "198.18.30.80"
    assert [m["aet"] for m in got["pacs_identity_modalities"]] == ["CT1", "MR1", "PROBEA"]
    assert got["nftables_whitelist_source_sets"] == {"dicom_gateways": ["198.18.30.80"]}
    assert got["nftables_whitelist_services"] == [{"name": "dicom", "ports": [11112], "sources": ["dicom_gateways"]}]


def test_a_gateway_binds_the_modalities_of_the_pacs_it_serves_to_their_sources_and_subjects():
    got = derive("gw-cloud")
    assert got["nginx_stream_proxy_modalities"] == [
        {"ae": "CT1", "sources": ["198.18.10.71/32"]},
        {"ae": "MR1", "sources": ["2001:db8:d1c0:10::72/128"], "subjects": ["CN=mr-1"]},
        {"ae": "PROBEA", "sources": ["198.18.10.90/32"]},
    ]
    assert got["nginx_stream_proxy_users"] == [{"name": "dr-remote", "passcode": PASSCODE, "calling_aes": ["CT1"]}]


def test_a_host_in_no_role_group_gets_nothing():
    assert derive("probe-a") == {}


def test_a_variable_the_inventory_sets_wins_over_the_model():
    hostvars, groups = estate()
    hostvars["pacs-a"]["pacs_identity_modalities"] = [{"name": "own", "aet": "OWN", "host": "198.18.10.5"}]
    got = derive("pacs-a", hostvars, groups)
    assert "pacs_identity_modalities" not in got
    assert "nftables_whitelist_source_sets" in got


def test_names_only_lists_the_derived_variables_without_their_values():
    names = derive("gw-cloud", names_only=True)
    assert names == ["nginx_stream_proxy_modalities", "nginx_stream_proxy_users"]
    assert PASSCODE not in repr(names)


def _broken(change):
    hostvars, groups = estate()
    hostvars = copy.deepcopy(hostvars)
    change(hostvars, groups)
    return hostvars, groups


def _set_modalities(modalities):
    def change(hostvars, _groups):
        for host in ("pacs-a", "probe-a", "probe-wrong"):
            hostvars[host]["dicomsec_site_modalities"] = modalities
    return change


@pytest.mark.parametrize("host, change, message", [
    ("pacs-a", _set_modalities([{"name": "ct-1", "ae": "CT1"}]),
     "site site_a: dicomsec_site_modalities[0] (CT1) needs addresses"),
    ("pacs-a", _set_modalities([{"name": "ct-1", "addresses": ["198.18.10.71"]}]),
     "site site_a: dicomsec_site_modalities[0] needs ae"),
    ("pacs-a", _set_modalities([{"ae": "CT1", "addresses": ["198.18.10.300"]}]),
     "dicomsec_site_modalities[0].addresses[0] is not an IP address"),
    ("pacs-a", _set_modalities([{"ae": "CT1", "addresses": ["198.18.10.0/24"]}]),
     "must be one address, not the prefix 198.18.10.0/24"),
    ("pacs-a", _set_modalities([{"ae": "CT1", "addresses": ["198.18.10.71"], "services": ["print"]}]),
     "services ['print'] are not among"),
    ("pacs-a", _set_modalities([{"ae": "PROBEA", "addresses": ["198.18.10.71"]}]),
     "would register the AE title PROBEA twice"),
    ("pacs-a", lambda hv, g: hv["probe-a"].pop("dicomsec_calling_ae"),
     "probe probe-a at the authorized position needs dicomsec_calling_ae"),
    ("gw-cloud", lambda hv, g: hv["gw-cloud"].update(dicomsec_gateway_for=["pacs-gone"]),
     "gateway gw-cloud: dicomsec_gateway_for names pacs-gone, which is not in the inventory"),
    ("gw-cloud", lambda hv, g: hv["pacs-a"]["dicomsec_site_users"][0].update(calling_aes=["XR9"]),
     "user dr-remote may use the calling AE XR9, which no modality of the PACS behind gateway gw-cloud registers"),
    ("pacs-cloud", lambda hv, g: (hv.update({"gw-2": {"dicomsec_gateway_for": ["pacs-cloud"]}}),
                                  g["dicom_gateways"].append("gw-2")),
     "pacs pacs-cloud is behind more than one gateway (gw-cloud, gw-2)"),
])
def test_an_inconsistent_model_is_refused_naming_the_site_and_entry(host, change, message):
    hostvars, groups = _broken(change)
    with pytest.raises(AnsibleFilterError, match="estate model: ") as err:
        estate_role_vars(hostvars, host, groups)
    assert message in str(err.value)
    assert PASSCODE not in str(err.value)


def test_the_consistent_model_of_each_refusal_above_is_accepted():
    # The twin: every host of the unbroken estate derives without error.
    hostvars, groups = estate()
    for host in hostvars:
        estate_role_vars(hostvars, host, groups)


def _with_remote_workstation(hostvars, groups):
    hostvars["pacs-cloud"]["dicomsec_site_modalities"] = [
        {"name": "rad-ws-1", "ae": "RADWS1", "remote": True, "certificate_subject": "CN=rad-ws-1"}]
    hostvars["gw-cloud"]["dicomsec_site_modalities"] = hostvars["pacs-cloud"]["dicomsec_site_modalities"]
    hostvars["pacs-cloud"]["dicomsec_pacs_serves"] = ["site_a", "cloud"]


def test_a_remote_workstation_is_bound_to_its_certificate_at_the_gateway_and_to_the_gateway_at_the_pacs():
    hostvars, groups = _broken(_with_remote_workstation)
    gateway = estate_role_vars(hostvars, "gw-cloud", groups)
    assert {"ae": "RADWS1", "subjects": ["CN=rad-ws-1"]} in gateway["nginx_stream_proxy_modalities"]
    pacs = estate_role_vars(hostvars, "pacs-cloud", groups)
    assert {"name": "rad-ws-1", "aet": "RADWS1", "host": "198.18.30.80", "port": 104,
            "allow": ["echo", "store"]} in pacs["pacs_identity_modalities"]


def test_a_remote_workstation_cannot_be_served_by_a_pacs_without_a_gateway():
    def change(hostvars, groups):
        _with_remote_workstation(hostvars, groups)
        hostvars["gw-cloud"]["dicomsec_gateway_for"] = []
    hostvars, groups = _broken(change)
    with pytest.raises(AnsibleFilterError, match="serves the remote modality RADWS1 .site cloud., which only a PACS "
                                                 "behind a gateway can"):
        estate_role_vars(hostvars, "pacs-cloud", groups)


def test_a_remote_workstation_needs_a_certificate_subject():
    def change(hostvars, groups):
        _with_remote_workstation(hostvars, groups)
        del hostvars["pacs-cloud"]["dicomsec_site_modalities"][0]["certificate_subject"]
    hostvars, groups = _broken(change)
    with pytest.raises(AnsibleFilterError, match="RADWS1. is remote: it needs certificate_subject"):
        estate_role_vars(hostvars, "pacs-cloud", groups)


def _with_tunnel(hostvars, groups):
    hostvars["ipsec-a"] = dict(SITE_A, ansible_host="198.18.20.90")
    hostvars["ipsec-cloud"] = {"dicomsec_site": "cloud", "ansible_host": "198.18.20.91"}
    for name in ("pacs-cloud", "gw-cloud"):
        hostvars[name]["dicomsec_site_subnets"] = ["198.18.30.0/24"]
    for name in ("pacs-a", "probe-a", "probe-wrong", "ipsec-a"):
        hostvars[name]["dicomsec_site_subnets"] = ["198.18.10.0/24"]
    tunnels = [{"name": "a-cloud", "between": ["ipsec-a", "ipsec-cloud"], "auth": {"method": "x509"}}]
    for name in hostvars:
        hostvars[name]["dicomsec_tunnels"] = tunnels
    groups["ipsec_gateways"] = ["ipsec-a", "ipsec-cloud"]


def test_each_end_of_a_tunnel_gets_it_with_its_sites_subnets_and_address():
    hostvars, groups = _broken(_with_tunnel)
    got = estate_role_vars(hostvars, "ipsec-cloud", groups)
    assert got["strongswan_tunnel_tunnels"] == [{
        "name": "a-cloud", "auth": {"method": "x509"},
        "gateways": [{"host": "ipsec-a", "subnets": ["198.18.10.0/24"], "address": "198.18.20.90"},
                     {"host": "ipsec-cloud", "subnets": ["198.18.30.0/24"], "address": "198.18.20.91"}]}]
    assert estate_role_vars(hostvars, "ipsec-a", groups) == got


def test_a_tunnel_to_a_host_outside_ipsec_gateways_is_refused():
    def change(hostvars, groups):
        _with_tunnel(hostvars, groups)
        for name in hostvars:
            hostvars[name]["dicomsec_tunnels"] = [{"name": "a-b", "between": ["ipsec-a", "pacs-b"]}]
    hostvars, groups = _broken(change)
    with pytest.raises(AnsibleFilterError, match="tunnel a-b joins pacs-b, which is not in the ipsec_gateways group"):
        estate_role_vars(hostvars, "ipsec-a", groups)


def test_a_tunnel_end_whose_site_has_no_subnets_is_refused():
    def change(hostvars, groups):
        _with_tunnel(hostvars, groups)
        for name in ("pacs-cloud", "gw-cloud"):
            del hostvars[name]["dicomsec_site_subnets"]
    hostvars, groups = _broken(change)
    with pytest.raises(AnsibleFilterError, match="joins ipsec-cloud, whose site cloud has no dicomsec_site_subnets"):
        estate_role_vars(hostvars, "ipsec-a", groups)
