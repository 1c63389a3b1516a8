# -*- coding: utf-8 -*-
"""verify.yml's journal check (tasks/journal_checks.yml, control audit_log): which refusals
it looks up, under which identifier and needle, and when it says it cannot tell.

The PACS and the gateway are pynetdicom servers on loopback (or nothing listening, which
the probe sees as the reset a firewall sends); their "journal" is this machine's, which
holds none of their refusals, so where a refusal is looked up the check must fail (or be
inconclusive where this machine has no journal at all), and where nothing could have
written one there is no record.
"""

from __future__ import annotations

import socket
import sys

from dicom_lab import LOOPBACK, free_port
from playbook_lab import PACS, REGISTERED_AE, client_tls, load_reports, run_verify, start_tls_pacs
from test_verify_probe_positions import GATEWAY, gateway_group, start_gate

LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}


def journal_records(tmp_path):
    document, _junit, _page = load_reports(tmp_path)
    return [r for r in document["records"] if r["control"] == "audit_log"]


def probe(pki, position, **extra):
    return dict({"dicomsec_probe_position": position, "dicomsec_site": "site_a", "dicomsec_calling_ae": REGISTERED_AE,
                 "dicomsec_probe_tls": client_tls(pki), "dicomsec_probe_address": LOOPBACK}, **extra)


def run(tmp_path, port, position, pacs_vars=None, extra_groups=None):
    return run_verify(tmp_path, port, "probes", position, pacs_vars=dict(LOCAL, **(pacs_vars or {})),
                      extra_vars={"dicomsec_verify_audit_log": True}, extra_groups=extra_groups)


def test_orthancs_refusal_is_looked_up_under_orthanc_with_the_calling_ae_and_address(pki, servers, tmp_path):
    # No gateway: the authorized probe's unknown AE title meets the PACS itself (1/1/3).
    port = servers(start_tls_pacs(pki, calling_aes=[REGISTERED_AE]))
    _rc, out, _tasks = run(tmp_path, port, probe(pki, "authorized"), {"dicomsec_site": "site_a"})
    [journal] = journal_records(tmp_path)
    assert journal["target"] == PACS and journal["request"]["journal"] == "the journal under the identifier orthanc"
    assert "Rejected association for remote AET NOT-REGISTERED on IP 127.0.0.1" in journal["expected"], journal
    assert journal["verdict"] in ("fail", "inconclusive"), journal
    if journal["verdict"] == "fail":
        assert 'no entry for 127.0.0.1 ("Rejected association for remote AET NOT-REGISTERED' in journal["evidence"]
    else:
        assert "journalctl failed on " + PACS in journal["evidence"], journal


def test_orthancs_refusal_is_inconclusive_where_orthanc_logs_to_its_directory(pki, servers, tmp_path):
    port = servers(start_tls_pacs(pki, calling_aes=[REGISTERED_AE]))
    rc, out, _tasks = run(tmp_path, port, probe(pki, "authorized"),
                          {"dicomsec_site": "site_a", "pacs_identity_log_to_journal": False})
    assert rc != 0, out
    [journal] = journal_records(tmp_path)
    assert journal["verdict"] == "inconclusive", journal
    assert journal["evidence"].startswith("pacs_identity_log_to_journal is false on " + PACS), journal


def test_pacs_that_accepted_the_unknown_ae_leaves_nothing_to_look_up(pki, servers, tmp_path):
    # The twin: an open PACS never refused, so no journal holds a refusal to look for.
    port = servers(start_tls_pacs(pki))
    _rc, out, _tasks = run(tmp_path, port, probe(pki, "authorized"), {"dicomsec_site": "site_a"})
    assert journal_records(tmp_path) == [], out


def test_gateway_that_nothing_answered_for_is_not_looked_up(pki, tmp_path):
    # Nothing listens at the gateway's port: the probe meets a reset, so no gateway wrote
    # a decision and none is expected. The PACS's firewall (a reset too) is looked up.
    gate = gateway_group(free_port())
    _rc, out, _tasks = run(tmp_path, free_port(), probe(pki, "wrong_segment"), extra_groups=gate)
    assert [r["target"] for r in journal_records(tmp_path)] == [PACS], out


def test_gateway_that_refused_the_association_is_looked_up_under_its_tag(pki, servers, tmp_path):
    # The probe presents no identity: the gate rejects it (1/2/1), and writes that decision.
    gate = gateway_group(servers(start_gate(pki)))
    _rc, out, _tasks = run(tmp_path, free_port(), probe(pki, "wrong_segment"), extra_groups=gate)
    records = {r["target"]: r for r in journal_records(tmp_path)}
    assert sorted(records) == sorted([PACS, GATEWAY]), out
    gateway = records[GATEWAY]
    assert gateway["request"]["journal"] == "the journal under the identifier dicom_gate", gateway
    assert gateway["verdict"] in ("fail", "inconclusive"), gateway


def silent_port():
    """A port whose connections the kernel completes and nobody answers: a probe there times out."""
    listener = socket.create_server((LOOPBACK, 0), backlog=16)
    return listener, listener.getsockname()[1]


def test_silence_behind_a_rejecting_firewall_is_not_looked_up_in_the_pacs_journal(pki, tmp_path):
    # A firewall that rejects answers with a reset: silence means the attempt was stopped
    # before the PACS (a router's filter, no route), so the PACS's journal has nothing.
    listener, port = silent_port()
    with listener:
        _rc, out, _tasks = run(tmp_path, port, probe(pki, "wrong_segment"), {"nftables_whitelist_refused_action": "reject"})
    assert journal_records(tmp_path) == [], out


def test_silence_behind_a_dropping_firewall_is_looked_up_in_the_pacs_journal(pki, tmp_path):
    # The twin: where the firewall drops, silence is its refusal, and its log is looked up.
    listener, port = silent_port()
    with listener:
        _rc, out, _tasks = run(tmp_path, port, probe(pki, "wrong_segment"), {"nftables_whitelist_refused_action": "drop"})
    [journal] = journal_records(tmp_path)
    assert journal["target"] == PACS and "(timeout)" in journal["request"]["attempt"], journal
