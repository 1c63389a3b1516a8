# -*- coding: utf-8 -*-
"""atna_audit end to end on loopback: real associations through the gateway (nginx_stream_proxy),
its decision log read by rsyslogd on the role's configuration, DICOM audit messages sent over
mutual TLS to a second rsyslogd, and the XML that arrived there parsed and checked.

Every message checked is the one for the attempt just made: the collector's count before the
attempt is kept and the test waits for exactly one more.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import uuid

import pytest
from atna_lab import COLLECTOR_NAME, GATEWAY_NAME, Collector, Sender, sender_vars, summary, wait_for
from gate_lab import CALLED_AE, PASSCODES

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_probe


def probe(gw, listener="plain", calling="CT01", called=CALLED_AE, identity=None):
    return dicom_probe.probe({"host": "127.0.0.1", "port": gw.port(listener), "called_ae": called,
                              "calling_ae": calling, "timeout": 8, "identity": identity, "dimse": "echo"})


def passcode(user="ct01tech", secret=None):
    return {"type": "username_passcode", "username": user, "passcode": secret or PASSCODES[user]}


def unique_ae(prefix):
    return (prefix + uuid.uuid4().hex.upper())[:16]


def new_messages(collector, before, expect=1, timeout=15.0):
    """The messages that arrived after the first ``before``, once ``expect`` of them are in;
    then a short wait, so a duplicate would be seen too."""
    wait_for(lambda: len(collector.received()) >= before + expect, timeout=timeout)
    time.sleep(0.5)
    records = collector.received()[before:]
    return records


def settled(gateway, collector, timeout=60.0):
    """The collector's count once every decision the gate logged so far has arrived.

    A refusal with a calling AE of its own is made and waited for: the sender reads the log
    in order and sends from one queue, so every earlier decision is in before it. A test that
    counts from here counts its own messages only, however late a loaded machine delivered
    the previous test's."""
    marker = unique_ae("SYNC")
    assert probe(gateway, calling=marker)["outcome"] == "rejected"
    arrived = wait_for(lambda: any(marker in record["msg"] for record in collector.received()), timeout=timeout)
    assert arrived, "the marker %s never reached the collector" % marker
    return len(collector.received())


def arrived_once(collector, before, users, timeout=60.0):
    """The requestor of every message after ``before``, once each of ``users`` is among them;
    then a short wait, so a duplicate would be seen too."""
    wait_for(lambda: set(users) <= set(_users_since(collector, before)), timeout=timeout)
    time.sleep(1.0)
    return _users_since(collector, before)


@pytest.fixture(scope="session")
def audit(gateway, collector, sender):
    """The sender is reading the log: wait until a first refusal has gone all the way. Its
    start makes Diffie-Hellman parameters (the GnuTLS driver), which can take a while."""
    for _attempt in range(120):
        before = len(collector.received())
        probe(gateway, calling=unique_ae("WARMUP"))
        if wait_for(lambda: len(collector.received()) > before, timeout=1.0):
            return collector
    pytest.fail("no audit message reached the collector: " + sender.daemon.output()[-2000:])


def one(collector, before):
    records = new_messages(collector, before)
    assert len(records) == 1, records
    return records[0], summary(collector.messages()[before])


# ---------------------------------------------------------------------------------------
# Mapping: identity successes and failures, refusals, unidentified accepts
# ---------------------------------------------------------------------------------------


def test_accepted_identity_is_a_user_authentication_login_with_success(gateway, audit):
    before = settled(gateway, audit)
    result = probe(gateway, identity=passcode())
    assert result["outcome"] == "accepted", result
    record, msg = one(audit, before)
    assert (msg["event_id"], msg["event_id_system"], msg["event_id_text"]) == ("110114", "DCM", "User Authentication")
    assert (msg["type_code"], msg["type_text"]) == ("110122", "Login")
    assert msg["action"] == "E"
    assert msg["outcome"] == "0"
    [user] = msg["requestor"]
    assert user["UserID"] == "ct01tech"
    assert user["AlternativeUserID"] == "AETITLES=CT01"
    assert user["NetworkAccessPointID"] == "127.0.0.1"
    assert user["NetworkAccessPointTypeCode"] == "2"
    [pacs] = msg["others"]
    assert pacs["UserID"] == CALLED_AE
    assert pacs["AlternativeUserID"] == "AETITLES=" + CALLED_AE
    assert pacs["NetworkAccessPointID"] == GATEWAY_NAME
    assert msg["source_id"] == "DICOM-GW-LAB"
    assert msg["site_id"] == "Radiology Lab & Co"
    assert msg["source_type"] == "6"
    assert "authorized" in msg["description"]
    # RFC 5424 header: facility 10 severity 5, APP-NAME and MSGID as ITI-20 asks.
    assert (record["pri"], record["version"], record["app_name"], record["msgid"]) == ("85", "1", "ATNA", "IHE+RFC-3881")
    assert record["hostname"] == GATEWAY_NAME


def test_wrong_passcode_is_a_user_authentication_login_with_failure(gateway, audit):
    before = settled(gateway, audit)
    result = probe(gateway, identity=passcode(secret="not-the-passcode-0"))
    assert result["outcome"] == "rejected", result
    record, msg = one(audit, before)
    assert (msg["event_id"], msg["type_code"], msg["outcome"]) == ("110114", "110122", "4")
    assert msg["requestor"][0]["UserID"] == "ct01tech"
    assert "wrong-passcode" in msg["description"] and "1/2/1" in msg["description"]
    assert record["pri"] == "84"


def test_unknown_user_is_a_user_authentication_failure_naming_the_claimed_user(gateway, audit):
    before = settled(gateway, audit)
    name = "intruder-" + uuid.uuid4().hex[:8]
    result = probe(gateway, identity=passcode(user="ct01tech", secret="x" * 14) | {"username": name})
    assert result["outcome"] == "rejected", result
    _record, msg = one(audit, before)
    assert (msg["event_id"], msg["outcome"]) == ("110114", "4")
    assert msg["requestor"][0]["UserID"] == name
    assert "unknown-user" in msg["description"]


def test_missing_identity_is_a_user_authentication_failure(gateway, audit):
    before = settled(gateway, audit)
    result = probe(gateway)
    assert result["outcome"] == "rejected", result
    _record, msg = one(audit, before)
    assert (msg["event_id"], msg["outcome"]) == ("110114", "4")
    # No user was claimed: the requestor is the calling AE.
    assert msg["requestor"][0]["UserID"] == "CT01"
    assert "identity-required" in msg["description"]


def test_unknown_calling_ae_is_a_security_alert_node_authentication(gateway, audit):
    before = settled(gateway, audit)
    calling = unique_ae("ROGUE")
    result = probe(gateway, calling=calling, identity=passcode())
    assert result["outcome"] == "rejected", result
    record, msg = one(audit, before)
    assert (msg["event_id"], msg["event_id_text"]) == ("110113", "Security Alert")
    assert (msg["type_code"], msg["type_text"]) == ("110126", "Node Authentication")
    assert msg["outcome"] == "4"
    [node] = msg["requestor"]
    assert node["UserID"] == calling
    assert node["AlternativeUserID"] == "AETITLES=" + calling
    assert node["NetworkAccessPointID"] == "127.0.0.1"
    assert "calling-ae-not-recognized" in msg["description"] and "1/1/3" in msg["description"]
    assert record["pri"] == "84"


def test_wrong_called_ae_is_a_security_alert_use_of_restricted_function(gateway, audit):
    before = settled(gateway, audit)
    result = probe(gateway, called="NOTPACS", identity=passcode())
    assert result["outcome"] == "rejected", result
    _record, msg = one(audit, before)
    assert (msg["event_id"], msg["type_code"], msg["type_text"]) == ("110113", "110132", "Use of Restricted Function")
    assert msg["others"][0]["UserID"] == "NOTPACS"
    assert "called-ae-not-recognized" in msg["description"]


def test_bytes_that_are_not_dicom_are_a_security_alert_known_by_address(gateway, audit):
    before = settled(gateway, audit)
    with socket.create_connection(("127.0.0.1", gateway.port("plain")), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        sock.settimeout(5)
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass
    _record, msg = one(audit, before)
    assert (msg["event_id"], msg["type_code"], msg["outcome"]) == ("110113", "110132", "4")
    [node] = msg["requestor"]
    # No AE title was read: the node is its address, and no AlternativeUserID is made up.
    assert node["UserID"] == "127.0.0.1"
    assert "AlternativeUserID" not in node
    assert "not-dicom" in msg["description"] and "verdict close" in msg["description"]
    # The gateway stands in for the PACS that was never named.
    assert msg["others"][0]["UserID"] == "DICOM-GW-LAB"


def test_accept_without_identity_is_an_informative_node_authentication_alert(gateway, audit):
    before = settled(gateway, audit)
    result = probe(gateway, listener="optional_identity")
    assert result["outcome"] == "accepted", result
    record, msg = one(audit, before)
    assert (msg["event_id"], msg["type_code"], msg["outcome"]) == ("110113", "110126", "0")
    assert msg["requestor"][0]["UserID"] == "CT01"
    assert record["pri"] == "85"


# ---------------------------------------------------------------------------------------
# Escaping: every value from the network is XML-escaped
# ---------------------------------------------------------------------------------------


def test_hostile_calling_ae_arrives_escaped_and_the_xml_parses(gateway, audit):
    before = settled(gateway, audit)
    hostile = "<x>&'\"/>Z"
    result = probe(gateway, calling=hostile, identity=passcode())
    assert result["outcome"] == "rejected", result
    record, msg = one(audit, before)
    # The parser gives back exactly what the client sent: nothing closed the attribute early,
    # no element was injected.
    assert msg["requestor"][0]["UserID"] == hostile
    assert msg["requestor"][0]["AlternativeUserID"] == "AETITLES=" + hostile
    assert "&lt;x&gt;&amp;&apos;&quot;/&gt;Z" in record["msg"]
    assert audit.messages()[before].find(".//x") is None


def test_control_characters_and_quotes_in_a_user_name_arrive_as_valid_xml(gateway, audit):
    # A control byte in a user name, which pynetdicom refuses to send: the line as the gate
    # writes it (nginx's escape=json turns the byte into \\u0001), appended to the same log.
    before = settled(gateway, audit)
    line = {"time": "2026-01-01T00:00:00+00:00", "listener": "plain", "client_addr": "127.0.0.1",
            "client_port": "40000", "server_port": str(gateway.port("plain")), "tls_version": "",
            "client_cert_subject": "", "client_cert_verify": "NONE", "called_ae": CALLED_AE,
            "calling_ae": "CT01", "user": "ev\u0001il\"</x>", "identity_type": "username_passcode",
            "verdict": "reject", "reason": "unknown-user", "reject": "1/2/1", "contexts": "1",
            "request_bytes": "200", "upstream": "", "bytes_from_client": 0, "bytes_to_client": 10,
            "duration": 0.001, "status": 200}
    with open(gateway.log_file, "a", encoding="utf-8") as log:
        log.write(json.dumps(line, separators=(",", ":")) + "\n")
    _record, msg = one(audit, before)
    assert msg["requestor"][0]["UserID"] == "ev#001il\"</x>"


def test_a_line_that_is_not_a_decision_sends_nothing(gateway, audit):
    before = settled(gateway, audit)
    with open(gateway.log_file, "a", encoding="utf-8") as log:
        log.write('not json <AuditMessage/>\n{"time":"x","reason":"no verdict"}\n')
    # Its twin, a real refusal right after, does arrive, and is the only new message.
    calling = unique_ae("AFTER")
    probe(gateway, calling=calling, identity=passcode())
    records = new_messages(audit, before)
    assert len(records) == 1, records
    assert summary(audit.messages()[before])["requestor"][0]["UserID"] == calling


# ---------------------------------------------------------------------------------------
# Mutual TLS: a collector that does not trust the gateway, a repository of the wrong name
# ---------------------------------------------------------------------------------------


def _twin(atna_root, pki, gateway, name, collector_kwargs=None, repository=None, extra=None, sender_env=None):
    """A collector and a sender of their own, the sender reading the whole log (so it has
    lines to send from its first second). ``repository(collector)`` overrides the sender's;
    ``extra``: more of the role's variables; ``sender_env``: the sender's extra environment."""
    coll = Collector(atna_root / (name + "-collector"), pki, **(collector_kwargs or {})).start()
    extra = dict(extra or {}, atna_audit_read_existing=True)
    if repository is not None:
        extra["atna_audit_repository"] = repository(coll)
    snd = Sender(atna_root / (name + "-sender"),
                 sender_vars(atna_root / (name + "-sender"), pki, coll, gateway.log_file, **extra)).start(env=sender_env)
    return coll, snd


def _refusal_while_twins_run(gateway, seconds=6.0):
    calling = unique_ae("TWIN")
    probe(gateway, calling=calling, identity=passcode())
    time.sleep(seconds)
    return calling


def _stop(*pairs):
    for coll, snd in pairs:
        snd.stop()
        coll.stop()


def _only_the_accepted_twin_receives(gateway, refused, accepted):
    """Make a refusal while both twins run; the accepted twin's collector receives it and the
    refused twin's receives nothing. Both twins are stopped afterwards."""
    try:
        calling = _refusal_while_twins_run(gateway)
        # The accepted twin sends the whole log from its first line: on a loaded machine that
        # can take longer than the six seconds, so wait for the attempt itself; the refused
        # twin had at least as long.
        wait_for(lambda: calling in _users_since(accepted[0], 0), timeout=60)
        assert calling in _users_since(accepted[0], 0)
        assert refused[0].received() == []
    finally:
        _stop(refused, accepted)


def test_collector_that_trusts_the_gateways_ca_receives_and_one_that_does_not_receives_nothing(atna_root, pki, gateway, audit):
    # The refused twin: the same sender configuration against a collector whose CA did not
    # sign the gateway's certificate; the accepted twin: the collector trusts the right CA.
    refused = _twin(atna_root, pki, gateway, "untrusting", {"ca": "other-ca.pem"})
    trusted = _twin(atna_root, pki, gateway, "trusting")
    _only_the_accepted_twin_receives(gateway, refused, trusted)


def test_gateway_certificate_of_the_right_name_from_another_ca_is_refused(atna_root, pki, gateway, audit):
    forged = pki.path("forged-gateway")
    refused = _twin(atna_root, pki, gateway, "forged", repository=lambda coll: {
        "host": "127.0.0.1", "port": coll.port, "ca": pki.path("ca.pem"), "certificate": forged + ".pem",
        "key": forged + ".key", "permitted_peers": [COLLECTOR_NAME]})
    try:
        _refusal_while_twins_run(gateway)
        assert refused[0].received() == []
    finally:
        _stop(refused)


def test_repository_whose_certificate_is_not_for_a_permitted_name_gets_nothing(atna_root, pki, gateway, audit):
    # The gateway refuses the server: a repository the CA signed, but for another name than
    # the one the gateway may send to (x509/name). Its twin with the right name is the
    # trusting collector above.
    refused = _twin(atna_root, pki, gateway, "wrongname", repository=lambda coll: {
        "host": "127.0.0.1", "port": coll.port, "ca": pki.path("ca.pem"), "certificate": pki.path("gateway.pem"),
        "key": pki.path("gateway.key"), "permitted_peers": ["other-arr.hospital.test"]})
    try:
        _refusal_while_twins_run(gateway)
        assert refused[0].received() == []
    finally:
        _stop(refused)


TLS_1_2_ONLY = "NORMAL:-VERS-ALL:+VERS-TLS1.2"


def test_sender_with_tls_1_3_minimum_sends_nothing_to_a_tls_1_2_repository_and_the_default_sends(atna_root, pki, gateway, audit):
    # Both twins send to a repository that speaks TLS 1.2 alone: the default minimum (1.2)
    # delivers, a minimum of 1.3 never completes a handshake.
    refused = _twin(atna_root, pki, gateway, "tls13min", {"priorities": TLS_1_2_ONLY},
                    extra={"atna_audit_tls_min_version": "TLSv1.3"})
    accepted = _twin(atna_root, pki, gateway, "tls12min", {"priorities": TLS_1_2_ONLY})
    _only_the_accepted_twin_receives(gateway, refused, accepted)


# ---------------------------------------------------------------------------------------
# The listener that holds the GnuTLS driver loaded
# ---------------------------------------------------------------------------------------


def _holder_port(sender):
    """The TCP port the sender's rsyslogd listens on, and the address it is bound to."""
    out = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=True).stdout
    mine = [line.split() for line in out.splitlines() if "pid=%d," % sender.daemon.proc.pid in line]
    assert len(mine) == 1, out
    address, _sep, port = mine[0][3].rpartition(":")
    return address, int(port)


def test_the_gnutls_driver_is_loaded_once_however_many_messages_are_sent(atna_root, pki, gateway, audit):
    # rsyslog 8.2302 unloads a stream driver when its last connection closes, and every load of
    # the GnuTLS driver generates Diffie-Hellman parameters (up to 1.5 s of CPU). With a connection
    # per message, only the role's holder keeps that to one load per start. rsyslogd's debug log
    # names each load; a sender of its own sends the whole decision log, one connection a line.
    debug = atna_root / "holder-debug.log"
    attempts = _refusals(gateway, "LOADS", count=10)
    twin = _twin(atna_root, pki, gateway, "holder",
                 sender_env={"RSYSLOG_DEBUG": "Debug NoStdOut", "RSYSLOG_DEBUGLOG": str(debug)})
    try:
        wait_for(lambda: set(attempts) <= set(_users_since(twin[0], 0)), timeout=120)
        sent = _users_since(twin[0], 0)
        assert set(attempts) <= set(sent), sent
        loads = debug.read_text(errors="replace").count("gtlsGlblInit: Running")
        assert len(sent) >= 10 and loads == 1, "%d messages sent, the GnuTLS driver loaded %d times" % (len(sent), loads)
    finally:
        _stop(twin)


def test_the_driver_holder_listens_on_loopback_alone_and_admits_no_certificate(pki, gateway, audit, sender):
    address, port = _holder_port(sender)
    assert address == "127.0.0.1"
    # A port the kernel picked, written where the role said, not syslog's 514.
    assert port != 514
    assert (sender.root / "work" / "driver-holder.port").read_text().strip() == str(port)
    # A client with a certificate the gateway's CA signed, for a real name: the handshake
    # may complete, then rsyslog checks the name against the holder's permitted peer and
    # closes the connection; what was sent is never read.
    context = ssl.create_default_context(cafile=pki.path("ca.pem"))
    context.check_hostname = False
    context.load_cert_chain(pki.path("gateway.pem"), pki.path("gateway.key"))
    with socket.create_connection((address, port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"10 <84>1 - x")
                assert tls.recv(100) == b""
        except (ssl.SSLError, ConnectionError):
            pass
    # The sender still sends.
    settled(gateway, audit)


@pytest.mark.parametrize("host_loads_imtcp", [True, False], ids=["host-loads-imtcp", "host-without-imtcp"])
def test_the_check_refuses_a_host_configuration_that_loads_imtcp_already(atna_root, pki, collector, gateway, host_loads_imtcp):
    # The holder needs imtcp, which rsyslog cannot load twice: the checker the role runs before
    # it replaces its file must refuse a host whose other files load it, and pass one that does not.
    name = "host-imtcp" if host_loads_imtcp else "host-plain"
    host = atna_root / name / "etc"
    (host / "rsyslog.d").mkdir(parents=True)
    (host / "work").mkdir()
    (host / "rsyslog.conf").write_text('global(workDirectory="%s")\ninclude(file="%s/rsyslog.d/*.conf")\n' % (host / "work", host))
    (host / "rsyslog.d" / "10-syslog-server.conf").write_text(
        ('module(load="imtcp")\n' if host_loads_imtcp else "")
        + 'action(type="omfile" file="%s")\n' % (host / "messages"))
    snd = Sender(atna_root / name / "sender", sender_vars(
        atna_root / name / "sender", pki, collector, gateway.log_file, atna_audit__main_conf=str(host / "rsyslog.conf"),
        atna_audit__conf_dir=str(host / "rsyslog.d"), atna_audit__conf=str(host / "rsyslog.d" / "60-dicomsec-atna-audit.conf")))
    result = subprocess.run(["sh", str(snd.root / "atna-audit-check.sh"), str(snd.root / "atna-audit.conf")],
                            capture_output=True, text=True, timeout=120, check=False)
    if host_loads_imtcp:
        assert result.returncode != 0, result
        assert "module 'imtcp' already in this config" in result.stdout + result.stderr, result
    else:
        assert result.returncode == 0, result


# ---------------------------------------------------------------------------------------
# An unreachable repository, and restarts
# ---------------------------------------------------------------------------------------


def _refusals(gateway, prefix, count=3):
    attempts = [unique_ae("%s%d" % (prefix, i)) for i in range(count)]
    for calling in attempts:
        result = probe(gateway, calling=calling, identity=passcode())
        assert result["outcome"] == "rejected", result
    return attempts


def _users_since(collector, before):
    return [summary(m)["requestor"][0]["UserID"] for m in collector.messages()[before:]]


def _evidence(gateway, sender, collector, attempts):
    """What a failed delivery test shows: the decision log's lines for the attempts, and what
    both rsyslogds said."""
    lines = [line for line in gateway.log_file.read_text(errors="replace").splitlines()
             if any(a in line for a in attempts)]
    return ("decision log lines for the attempts:\n%s\nsender said:\n%s\ncollector said:\n%s"
            % ("\n".join(lines), sender.daemon.output()[-3000:], collector.daemon.output()[-1500:]))


def test_messages_written_while_the_repository_is_down_arrive_once_when_it_is_back(gateway, audit, sender):
    before = settled(gateway, audit)
    audit.stop()
    try:
        attempts = _refusals(gateway, "DOWN")
        time.sleep(2.0)
    finally:
        audit.start()
    assert sorted(arrived_once(audit, before, attempts)) == sorted(attempts), _evidence(gateway, sender, audit, attempts)


def test_a_restarted_sender_sends_what_it_missed_once_and_nothing_again(gateway, audit, sender):
    # The state file: lines written while rsyslog is stopped are read when it starts, and the
    # lines it had sent before are not sent a second time.
    before = settled(gateway, audit)
    sender.stop()
    try:
        attempts = _refusals(gateway, "STOP")
    finally:
        sender.start()
    assert sorted(arrived_once(audit, before, attempts)) == sorted(attempts), _evidence(gateway, sender, audit, attempts)


@pytest.mark.xfail(strict=True, reason="rsyslog 8.2302 stopped while its action is suspended drops the message in "
                   "flight and sends the next one twice after the restart (measured; see the role's README)")
def test_a_sender_restarted_while_the_repository_is_down_loses_and_repeats_nothing(gateway, audit, sender):
    before = settled(gateway, audit)
    audit.stop()
    try:
        attempts = _refusals(gateway, "BOTH")
        time.sleep(1.5)
        sender.stop()
        sender.start()
        time.sleep(1.0)
    finally:
        audit.start()
    new_messages(audit, before, expect=len(attempts), timeout=20)
    assert sorted(_users_since(audit, before)) == sorted(attempts)
