# -*- coding: utf-8 -*-
"""inventories/example is a consistent estate: ansible reads it, the playbooks parse against it,
and the estate model gives every PACS and gateway its role variables without an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from collections_path import collections_path

REPO = Path(__file__).resolve().parents[3]
INVENTORY = REPO / "inventories" / "example"
# What the estate's vault would hold: synthetic values, for this test alone.
VAULT = {"vault_dr_remote_passcode": "lab-only-Example7Kq2Wx9", "vault_orthanc_rest_password": "lab-only-Rest3Vb8Lm6Qz",
         "vault_pacs_tls_keys": {}}


def _run(*cmd):
    bindir = Path(sys.executable).parent
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path(), ANSIBLE_NOCOLOR="1",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="0", ANSIBLE_LOCALHOST_WARNING="0",
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    return subprocess.run([str(bindir / cmd[0]), *cmd[1:]], cwd=str(REPO), env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_ansible_reads_the_example_inventory_and_its_groups():
    proc = _run("ansible-inventory", "-i", str(INVENTORY), "--graph")
    assert proc.returncode == 0, proc.stderr
    for group in ("@site_a", "@site_b", "@cloud", "@pacs", "@dicom_gateways", "@ipsec_gateways", "@probes"):
        assert group in proc.stdout


@pytest.mark.parametrize("playbook", ["site.yml", "verify.yml", "audit.yml"])
def test_the_playbooks_parse_against_the_example_inventory(playbook):
    proc = _run("ansible-playbook", "-i", str(INVENTORY), "--syntax-check", str(REPO / "playbooks" / playbook))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_estate_model_gives_each_pacs_and_gateway_its_role_variables(tmp_path):
    playbook = tmp_path / "derive.yml"
    hosts = "groups['pacs'] + groups['dicom_gateways'] + groups['ipsec_gateways']"
    playbook.write_text(json.dumps([{
        "name": "Derive the example estate's role variables",
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [{
            "name": "Derive for each PACS and gateway",
            "ansible.builtin.set_fact": {
                "derived": "{{ derived | default({}) | combine({item: hostvars"
                           " | dicomsec.hardening.estate_role_vars(item, groups)}) }}"},
            "loop": "{{ %s }}" % hosts,
        }, {
            "name": "Print them",
            "ansible.builtin.debug": {"var": "derived"},
        }],
    }]))
    extra = tmp_path / "vault.json"
    extra.write_text(json.dumps(VAULT))
    proc = _run("ansible-playbook", "-i", str(INVENTORY), "-e", "@%s" % extra, str(playbook))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    result = json.loads(proc.stdout)
    derived = result["plays"][0]["tasks"][1]["hosts"]["localhost"]["derived"]
    cloud = derived["pacs-cloud.imaging.example"]
    assert cloud["pacs_identity_gateway_address"] == "198.18.30.80"
    assert sorted(m["aet"] for m in cloud["pacs_identity_modalities"]) == ["CT1", "MR1", "PROBE_A", "RADWS1"]
    pacs_a = derived["pacs-a.hospital-a.example"]
    assert pacs_a["nftables_whitelist_source_sets"] == {"modalities": ["198.18.10.71", "198.18.10.72", "198.18.10.95"]}
    assert "probe-a-guest" not in json.dumps(pacs_a)
    pacs_b = derived["pacs-b.hospital-b.example"]
    assert sorted(m["aet"] for m in pacs_b["pacs_identity_modalities"]) == ["PROBE_B", "US1"]
    gateway = derived["gw-cloud.imaging.example"]
    assert {"ae": "RADWS1", "subjects": ["CN=rad-ws-1,O=Imaging Provider"]} in gateway["nginx_stream_proxy_modalities"]
    assert [u["name"] for u in gateway["nginx_stream_proxy_users"]] == ["dr-remote"]
    tunnel = derived["ipsec-cloud.imaging.example"]["strongswan_tunnel_tunnels"][0]
    assert [(g["host"], g["subnets"]) for g in tunnel["gateways"]] == [
        ("ipsec-a.hospital-a.example", ["198.18.10.0/24"]), ("ipsec-cloud.imaging.example", ["198.18.30.0/24"])]
