# -*- coding: utf-8 -*-
"""playbooks/verify.yml from probe hosts (group probes, dicomsec_probe_position) against
real DICOM TLS servers on loopback.

A probe at the authorized position of the site a PACS serves must get through, and through
the PACS's gateway where it has one, with its identity and client certificate; the same
association without identity, with a wrong passcode, without a certificate, or straight to
the pinned PACS must be refused. A probe anywhere else (a wrong segment, another site's
authorized position) must be refused while it presents what a legitimate client presents.

The gateway here is a pynetdicom TLS server that answers as nginx_stream_proxy's gate does
(its README, "Reject codes"): 1/1/3 for a calling AE title it does not know, 1/2/1 for a
missing or wrong identity. The gate itself is proven against nginx in its own tests; these
prove what verify.yml asks of it and how it judges the answers.
"""

from __future__ import annotations

from dicom_lab import LOOPBACK, free_port
from lab_servers import USERS, ScpPolicy, start_scp
from playbook_lab import PACS, REGISTERED_AE, client_tls, load_reports, run_verify, start_tls_pacs

GATEWAY = "lab-gateway"
IDENTITY = {"type": "username_passcode", "username": "ct01", "passcode": USERS["ct01"]}
STOP_POSITION_TASK = "Stop unless this position is one verify.yml knows"
FINAL_TASK = "Fail the run when any check failed or could not tell, now that the reports are written"


def records_of(tmp_path):
    document, _junit, _page = load_reports(tmp_path)
    return document, [(r["control"], r["target"], r["verdict"]) for r in document["records"]]


def probe(pki, position, site="site_a", **extra):
    return dict({"dicomsec_probe_position": position, "dicomsec_site": site, "dicomsec_calling_ae": REGISTERED_AE,
                 "dicomsec_probe_tls": client_tls(pki)}, **extra)


def start_gate(pki, identity_required=True, identity_reject=(0x01, 0x02, 0x01)):
    """A TLS server requiring client certificates that refuses as the gate does (or, with
    ``identity_reject``, refuses a bad identity with another code)."""
    from pynetdicom import evt

    server = start_scp(ScpPolicy.OPEN, ssl_context=pki.server_context())

    def gate(event):
        requestor = event.assoc.requestor
        calling = requestor.primitive.calling_ae_title
        calling = (calling.decode() if isinstance(calling, bytes) else calling).strip()
        identity = requestor.user_identity
        if calling != REGISTERED_AE:
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)
            event.assoc.kill()
        elif identity_required and (
                identity is None or identity.user_identity_type != 2
                or USERS.get(identity.primary_field.decode()) != (identity.secondary_field or b"").decode()):
            event.assoc.acse.send_reject(*identity_reject)
            event.assoc.kill()

    server.bind(evt.EVT_REQUESTED, gate)
    return server


def gateway_group(gate_port):
    return {"dicom_gateways": {"hosts": {GATEWAY: {
        "dicomsec_dicom_address": LOOPBACK,
        "dicomsec_gateway_for": [PACS],
        "nginx_stream_proxy_listeners": [{
            "name": "pacs", "port": gate_port, "called_aes": ["ANY-SCP"],
            "tls": {"certificate": "gateway.pem", "key": "gateway.key"},
            "client_certificate": {"ca": "ca.pem", "mode": "required"},
            "upstream": {"host": LOOPBACK, "port": 4242}}],
    }}}}


def test_wrong_segment_probe_passes_where_the_pacs_turns_it_away(pki, servers, tmp_path):
    port = servers(start_tls_pacs(pki, calling_aes=["MR02"]))
    rc, out, _tasks = run_verify(tmp_path, port, "probes", probe(pki, "wrong_segment"))
    assert rc == 0, out
    document, checks = records_of(tmp_path)
    assert checks == [("segmentation", PACS, "pass")], checks
    [record] = document["records"]
    assert record["role"] == "wrong_segment" and record["outcome"].startswith("rejected"), record
    assert record["request"]["calling_ae"] == REGISTERED_AE and record["request"]["client_certificate"] == "yes"


def test_wrong_segment_probe_fails_where_the_pacs_lets_it_in(pki, servers, tmp_path):
    port = servers(start_tls_pacs(pki, calling_aes=[REGISTERED_AE]))
    rc, out, tasks = run_verify(tmp_path, port, "probes", probe(pki, "wrong_segment"))
    assert rc != 0, out
    assert tasks[FINAL_TASK]["failed"] is True, out
    _document, checks = records_of(tmp_path)
    assert checks == [("segmentation", PACS, "fail")], checks


def test_authorized_probe_of_another_site_is_refused_like_any_other_site(pki, servers, tmp_path):
    # The PACS serves site_a; a probe registered at site_b stands where site_b's hosts
    # stand. It presents the PACS's registered title, so only its position may be refused.
    port = servers(start_tls_pacs(pki, calling_aes=["MR02"]))
    position = probe(pki, "authorized", site="site_b", dicomsec_calling_ae="PROBE_B")
    rc, out, _tasks = run_verify(tmp_path, port, "probes", position, pacs_vars={"dicomsec_site": "site_a"})
    assert rc == 0, out
    document, checks = records_of(tmp_path)
    assert checks == [("site_isolation", PACS, "pass")], checks
    assert document["records"][0]["request"]["calling_ae"] == REGISTERED_AE


def test_authorized_probe_of_another_site_fails_where_the_pacs_lets_it_in(pki, servers, tmp_path):
    port = servers(start_tls_pacs(pki, calling_aes=[REGISTERED_AE]))
    position = probe(pki, "authorized", site="site_b", dicomsec_calling_ae="PROBE_B")
    rc, out, _tasks = run_verify(tmp_path, port, "probes", position, pacs_vars={"dicomsec_site": "site_a"})
    assert rc != 0, out
    _document, checks = records_of(tmp_path)
    assert checks == [("site_isolation", PACS, "fail")], checks


def test_authorized_probe_of_a_served_site_gets_the_authorized_checks(pki, servers, tmp_path):
    port = servers(start_tls_pacs(pki, calling_aes=[REGISTERED_AE]))
    pacs = {"dicomsec_site": "cloud", "dicomsec_pacs_serves": ["site_a"]}
    rc, out, _tasks = run_verify(tmp_path, port, "probes", probe(pki, "authorized"), pacs_vars=pacs)
    assert rc == 0, out
    _document, checks = records_of(tmp_path)
    assert sorted(checks) == [("ae_whitelist", PACS, "pass"), ("authorized_path", PACS, "pass"),
                              ("authorized_path", PACS, "pass")], checks


def test_authorized_probe_proves_the_gateway_path_and_every_refusal_around_it(pki, servers, tmp_path):
    pacs_port = servers(start_tls_pacs(pki, calling_aes=["GATEWAY"]))
    gate = start_gate(pki)
    gate_port = servers(gate)
    position = probe(pki, "authorized", dicomsec_probe_identity=IDENTITY)
    rc, out, _tasks = run_verify(tmp_path, pacs_port, "probes", position, pacs_vars={"dicomsec_site": "site_a"},
                                 extra_groups=gateway_group(gate_port))
    assert rc == 0, out
    document, checks = records_of(tmp_path)
    assert sorted(checks) == sorted([
        ("authorized_path", GATEWAY, "pass"), ("authorized_path", GATEWAY, "pass"), ("ae_whitelist", GATEWAY, "pass"),
        ("identity", GATEWAY, "pass"), ("identity", GATEWAY, "pass"), ("client_certificate", GATEWAY, "pass"),
        ("gateway_pin", PACS, "pass")]), checks
    by = {(r["control"], r["request"]["identity"]): r for r in document["records"]}
    assert "service-provider-acse, reason 1 no-reason-given" in by[("identity", "none")]["evidence"]
    assert "service-provider-acse, reason 1" in by[("identity", "username_passcode (wrong)")]["evidence"]
    assert by[("client_certificate", "username_passcode")]["outcome"].startswith("tls_failed")
    assert by[("client_certificate", "username_passcode")]["request"]["client_certificate"] == "no"
    assert by[("gateway_pin", "username_passcode")]["address"] == "%s:%d" % (LOOPBACK, pacs_port)
    # The stored instance went through the gateway, not to the PACS.
    assert len(gate.stored) == 1, out
    for name in ("verify.json", "verify.junit.xml", "verify.html"):
        assert USERS["ct01"] not in (tmp_path / "reports" / name).read_text()


def test_authorized_probe_fails_where_the_gateway_skips_identity_and_the_pacs_answers_past_it(pki, servers, tmp_path):
    pacs_port = servers(start_tls_pacs(pki, calling_aes=[REGISTERED_AE]))
    gate_port = servers(start_gate(pki, identity_required=False))
    position = probe(pki, "authorized", dicomsec_probe_identity=IDENTITY)
    rc, out, tasks = run_verify(tmp_path, pacs_port, "probes", position, pacs_vars={"dicomsec_site": "site_a"},
                                extra_groups=gateway_group(gate_port))
    assert rc != 0, out
    _document, checks = records_of(tmp_path)
    failed = sorted((c, t) for c, t, v in checks if v == "fail")
    assert failed == [("gateway_pin", PACS), ("identity", GATEWAY), ("identity", GATEWAY)], checks
    assert "gateway_pin" in tasks[FINAL_TASK]["msg"], out


def test_identity_check_fails_where_the_gateway_refuses_with_another_code_than_1_2_1(pki, servers, tmp_path):
    # 1/1/1 (service-user) is what a server says of its own policy, not the authorisation
    # failure PS3.7 D.3.3.7 prescribes: the check wants the code the gate sends.
    pacs_port = servers(start_tls_pacs(pki, calling_aes=["GATEWAY"]))
    gate_port = servers(start_gate(pki, identity_reject=(0x01, 0x01, 0x01)))
    position = probe(pki, "authorized", dicomsec_probe_identity=IDENTITY)
    rc, out, _tasks = run_verify(tmp_path, pacs_port, "probes", position, pacs_vars={"dicomsec_site": "site_a"},
                                 extra_groups=gateway_group(gate_port))
    assert rc != 0, out
    document, checks = records_of(tmp_path)
    identity = [r for r in document["records"] if r["control"] == "identity"]
    assert [r["verdict"] for r in identity] == ["fail", "fail"], checks
    assert all("rejected with 1/1/1, not 1/2/1" in r["evidence"] for r in identity), identity


def test_probe_at_an_unknown_position_is_stopped_before_any_association(pki, servers, tmp_path):
    port = servers(start_tls_pacs(pki, calling_aes=[REGISTERED_AE]))
    rc, out, tasks = run_verify(tmp_path, port, "probes", probe(pki, "lobby"))
    assert rc != 0, out
    assert "dicomsec_probe_position of lab-probe is lobby" in tasks[STOP_POSITION_TASK]["msg"], out
    document, _junit, _page = load_reports(tmp_path)
    assert [(r["control"], r["verdict"]) for r in document["records"]] == [("position", "inconclusive")]


def _journal_run(pki, tmp_path, pacs_vars):
    import sys

    pacs = dict({"ansible_connection": "local", "ansible_python_interpreter": sys.executable}, **pacs_vars)
    position = probe(pki, "wrong_segment", dicomsec_probe_address=LOOPBACK)
    # Nothing listens: the firewall's reject, as the probe sees it.
    return run_verify(tmp_path, free_port(), "probes", position, pacs_vars=pacs,
                      extra_vars={"dicomsec_verify_audit_log": True})


def test_journal_check_is_inconclusive_and_says_why_where_the_firewall_logs_nothing(pki, tmp_path):
    rc, out, _tasks = _journal_run(pki, tmp_path, {"nftables_whitelist_log_enabled": False})
    assert rc != 0, out
    document, checks = records_of(tmp_path)
    assert checks == [("segmentation", PACS, "pass"), ("audit_log", PACS, "inconclusive")], checks
    assert "nftables_whitelist_log_enabled is false on lab-pacs" in document["records"][1]["evidence"]


def test_journal_check_fails_where_the_refusal_is_not_in_the_journal(pki, tmp_path):
    # The PACS host is this machine, whose kernel log holds no refusal of the probe: a
    # firewall that logs, as configured, must have written one.
    rc, out, _tasks = _journal_run(pki, tmp_path, {})
    assert rc != 0, out
    document, checks = records_of(tmp_path)
    assert checks[0] == ("segmentation", PACS, "pass"), checks
    [journal] = [r for r in document["records"] if r["control"] == "audit_log"]
    assert journal["request"]["journal"].startswith("the kernel log (prefix dicomsec-refused)"), journal
    assert journal["verdict"] in ("fail", "inconclusive"), journal
    if journal["verdict"] == "fail":
        assert "no entry for 127.0.0.1" in journal["evidence"], journal
    else:
        # No journal on this machine at all: journalctl said so.
        assert "journalctl failed on lab-pacs" in journal["evidence"], journal
