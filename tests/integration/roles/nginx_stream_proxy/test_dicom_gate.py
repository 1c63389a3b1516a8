# -*- coding: utf-8 -*-
"""The association gate of nginx_stream_proxy, through real nginx and real DICOM clients.

Every refusal has an accepted twin beside it that differs in the one thing refused. Clients
are the collection's own probe (module_utils.dicom_probe), the dicom_association module,
pynetdicom and DCMTK's storescu.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gate_lab import CALLED_AE, PASSCODES, read_decisions, wait_for

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_probe

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "modules"))
from dicom_lab import run_module  # noqa: E402

STORESCU = "/usr/bin/storescu"


def probe(gw, listener, calling="CT01", called=CALLED_AE, identity=None, tls=None, bind=None, dimse="echo"):
    req = {"host": "127.0.0.1", "port": gw.port(listener), "called_ae": called, "calling_ae": calling,
           "timeout": 8, "identity": identity, "tls": tls, "dimse": dimse}
    if bind:
        req["bind_address"] = bind
    return dicom_probe.probe(req)


def passcode(user="ct01tech", secret=None, positive=False):
    return {"type": "username_passcode", "username": user, "passcode": secret or PASSCODES[user],
            "positive_response_requested": positive}


def jwt(token, positive=False):
    return {"type": "jwt", "token": token, "positive_response_requested": positive}


def assert_accepted(result):
    assert result["outcome"] == "accepted", result
    assert result["operation"]["succeeded"], result


def assert_rejected(result, triplet):
    assert result["outcome"] == "rejected", result
    reject = result["reject"]
    assert (reject["result"], reject["source"], reject["reason"]) == triplet, result


def assert_closed(result):
    # Closed without an A-ASSOCIATE-RJ: at the TLS layer or by the gate.
    assert result["outcome"] in ("aborted", "refused", "tls_failed", "timeout"), result
    assert result["reject"] is None


CALLING = (1, 1, 3)
CALLED = (1, 1, 7)
IDENTITY = (1, 2, 1)


def last_decision(gw, **match):
    def find():
        for line in reversed(read_decisions(gw.log_file)):
            if all(line.get(k) == v for k, v in match.items()):
                return line
        return None

    return wait_for(find)


# ---------------------------------------------------------------------------------------
# AE titles and the host check the PACS can no longer do
# ---------------------------------------------------------------------------------------


def test_authorized_user_on_bound_ae_stores_through_the_gate(gateway):
    assert_accepted(probe(gateway, "plain", identity=passcode(), dimse="store"))


def test_unknown_calling_ae_is_rejected_with_reason_3(gateway):
    assert_rejected(probe(gateway, "plain", calling="INTRUDER", identity=passcode()), CALLING)


def test_wrong_called_ae_is_rejected_with_reason_7(gateway):
    assert_rejected(probe(gateway, "plain", called="ORTHANC", identity=passcode()), CALLED)


def test_bound_ae_from_its_own_source_is_accepted(gateway):
    assert_accepted(probe(gateway, "plain", calling="MR02", identity=passcode("mr02tech"), bind="127.0.0.2"))


def test_bound_ae_from_the_wrong_source_is_rejected_with_reason_3(gateway):
    result = probe(gateway, "plain", calling="MR02", identity=passcode("mr02tech"), bind="127.0.0.1")
    assert_rejected(result, CALLING)
    assert last_decision(gateway, calling_ae="MR02", reason="calling-ae-wrong-source")


def test_refused_request_never_reaches_the_upstream(gateway):
    gateway.upstream.clear()
    assert_rejected(probe(gateway, "plain", calling="INTRUDER", identity=passcode()), CALLING)
    assert_rejected(probe(gateway, "plain", identity=passcode(secret="guess")), IDENTITY)
    time.sleep(0.2)
    assert gateway.upstream.associations == []
    assert bytes(gateway.upstream.raw) == b""


# ---------------------------------------------------------------------------------------
# User identity: username and passcode, username only
# ---------------------------------------------------------------------------------------


def test_wrong_passcode_is_rejected_as_identity_failure(gateway):
    assert_rejected(probe(gateway, "plain", identity=passcode(secret="not-the-passcode")), IDENTITY)
    assert last_decision(gateway, user="ct01tech", reason="wrong-passcode")


def test_unknown_user_is_rejected_as_identity_failure(gateway):
    assert_rejected(probe(gateway, "plain", identity=passcode("nobody", secret="whatever")), IDENTITY)
    assert last_decision(gateway, user="nobody", reason="unknown-user")


def test_no_identity_is_rejected_where_identity_is_required(gateway):
    assert_rejected(probe(gateway, "plain"), IDENTITY)


def test_no_identity_is_accepted_where_identity_is_optional(gateway):
    assert_accepted(probe(gateway, "optional_identity"))


def test_wrong_identity_is_rejected_even_where_identity_is_optional(gateway):
    assert_rejected(probe(gateway, "optional_identity", identity=passcode(secret="nope")), IDENTITY)


def test_username_only_is_rejected_where_the_listener_does_not_allow_it(gateway):
    result = probe(gateway, "plain", identity={"type": "username", "username": "porter"})
    assert_rejected(result, IDENTITY)
    assert last_decision(gateway, user="", identity_type="username", reason="identity-type-not-allowed")


def test_username_only_is_accepted_where_the_listener_allows_it(gateway):
    assert_accepted(probe(gateway, "username_only", identity={"type": "username", "username": "porter"}))


def test_username_only_for_an_unknown_user_is_rejected(gateway):
    assert_rejected(probe(gateway, "username_only", identity={"type": "username", "username": "stranger"}), IDENTITY)


@pytest.mark.parametrize("name", ["constructor", "__proto__", "hasOwnProperty"])
def test_a_user_named_after_an_inherited_property_is_unknown(gateway, name):
    # The policy's users are a plain object: only its own keys are users.
    assert_rejected(probe(gateway, "username_only", identity={"type": "username", "username": name}), IDENTITY)
    assert last_decision(gateway, user=name, reason="unknown-user")
    assert_rejected(probe(gateway, "plain", identity=passcode(name, secret="whatever")), IDENTITY)
    assert last_decision(gateway, user=name, identity_type="username_passcode", reason="unknown-user")


def test_user_on_a_calling_ae_not_theirs_is_rejected(gateway):
    # mr02tech may use MR02 only; CT01 from its own source is otherwise fine.
    assert_rejected(probe(gateway, "plain", identity=passcode("mr02tech")), IDENTITY)
    assert last_decision(gateway, user="mr02tech", reason="user-not-allowed-on-calling-ae")


# ---------------------------------------------------------------------------------------
# JSON Web Tokens (type 5)
# ---------------------------------------------------------------------------------------


def test_jwt_rs256_from_the_jwks_is_accepted(gateway):
    assert_accepted(probe(gateway, "plain", identity=jwt(gateway.idp.token())))
    assert last_decision(gateway, user="dr.house", identity_type="jwt", verdict="accept")


def test_jwt_es256_from_a_pem_key_is_accepted(gateway):
    assert_accepted(probe(gateway, "plain", identity=jwt(gateway.idp.token(alg="ES256"))))


def _bad_tokens(idp):
    now = int(time.time())
    return {
        "jwt-expired": idp.token(exp=now - 120, iat=now - 600, nbf=now - 600),
        "jwt-not-yet-valid": idp.token(nbf=now + 600),
        "jwt-wrong-issuer": idp.token(iss="https://idp.elsewhere.test/"),
        "jwt-wrong-audience": idp.token(aud="another-service"),
        "jwt-no-expiry": idp.token(exp=None),
        "jwt-bad-signature": idp.token(key=idp.forger),
        "jwt-algorithm-refused": idp.token(alg="none", kid="idp-rsa"),
        "jwt-algorithm-refused-hs256": idp.token(alg="HS256", kid="idp-rsa"),
        "jwt-unknown-key": idp.token(kid="retired-2019"),
        "jwt-algorithm-mismatch": idp.token(alg="ES256", kid="idp-rsa"),
        "jwt-malformed": "eyJhbGciOiJSUzI1NiJ9.not json.c2ln",
    }


BAD_TOKENS = ("jwt-expired", "jwt-not-yet-valid", "jwt-wrong-issuer", "jwt-wrong-audience", "jwt-no-expiry",
              "jwt-bad-signature", "jwt-algorithm-refused", "jwt-algorithm-refused-hs256", "jwt-unknown-key",
              "jwt-algorithm-mismatch", "jwt-malformed")


@pytest.mark.parametrize("case", BAD_TOKENS)
def test_bad_jwt_is_rejected_as_identity_failure(gateway, case):
    token = _bad_tokens(gateway.idp)[case]
    assert_rejected(probe(gateway, "plain", identity=jwt(token)), IDENTITY)
    reason = case.replace("-hs256", "")
    assert last_decision(gateway, identity_type="jwt", reason=reason)


def test_jwt_within_the_clock_skew_is_accepted(gateway):
    # Expired 10 s ago, with 30 s of skew allowed: the twin of the expired token.
    now = int(time.time())
    assert_accepted(probe(gateway, "plain", identity=jwt(gateway.idp.token(exp=now - 10, iat=now - 300))))


def test_jwt_for_a_user_not_on_this_calling_ae_is_rejected(gateway):
    token = gateway.idp.token(sub="mr02tech")
    assert_rejected(probe(gateway, "plain", identity=jwt(token)), IDENTITY)


# ---------------------------------------------------------------------------------------
# TLS listeners and client certificates
# ---------------------------------------------------------------------------------------


def test_tls_client_with_the_bound_certificate_is_accepted(gateway):
    result = probe(gateway, "tls", calling="CTTLS", identity=passcode(), tls=gateway.pki.client_tls("ct01"))
    assert_accepted(result)
    line = last_decision(gateway, listener="tls", verdict="accept")
    assert line["client_cert_subject"] == "CN=CT01" and line["tls_version"] in ("TLSv1.2", "TLSv1.3")


def test_tls_client_with_another_trusted_certificate_is_rejected_with_reason_3(gateway):
    result = probe(gateway, "tls", calling="CTTLS", identity=passcode(), tls=gateway.pki.client_tls("mr02"))
    assert_rejected(result, CALLING)
    assert last_decision(gateway, listener="tls", reason="calling-ae-wrong-certificate")


def test_tls_client_without_a_certificate_is_closed(gateway):
    result = probe(gateway, "tls", calling="CTTLS", identity=passcode(), tls=gateway.pki.client_tls(None))
    # nginx finishes the handshake, then closes without an alert: the probe tells this close
    # from any other by the CertificateRequest it read, so the outcome says TLS refused it.
    assert result["outcome"] == "tls_failed" and result["reject"] is None, result
    assert result["tls"]["certificate_requested"] is True, result
    assert "asked for a client certificate in the TLS handshake, none was sent" in result["detail"], result


def test_a_close_after_the_handshake_is_not_blamed_on_a_certificate_that_was_sent(gateway):
    # The twin: an untrusted certificate was sent, so the same close stays what it is.
    result = probe(gateway, "tls", calling="CTTLS", identity=passcode(), tls=gateway.pki.client_tls("intruder"))
    assert_closed(result)
    assert "none was sent" not in result.get("detail", ""), result


def test_tls_client_with_an_untrusted_certificate_is_closed(gateway):
    assert_closed(probe(gateway, "tls", calling="CTTLS", identity=passcode(), tls=gateway.pki.client_tls("intruder")))


def test_a_listener_with_a_crl_accepts_a_certificate_the_ca_still_stands_behind(gateway):
    result = probe(gateway, "tls_crl", calling="CTTLS", identity=passcode(), tls=gateway.pki.client_tls("ct01"))
    assert_accepted(result)


def test_a_listener_with_a_crl_closes_a_revoked_certificate_at_the_tls_layer(gateway):
    gateway.upstream.clear()
    result = probe(gateway, "tls_crl", calling="CTTLS", identity=passcode(), tls=gateway.pki.client_tls("revoked"))
    # With TLS 1.3 the client learns of the refusal after its side of the handshake is done,
    # as an alert on its first read: aborted or tls_failed, never an association.
    assert_closed(result)
    assert last_decision(gateway, listener="tls_crl", verdict="close", reason="tls-or-internal-error")
    assert "certificate revoked" in gateway.nginx.error_log()
    assert gateway.upstream.associations == [] and bytes(gateway.upstream.raw) == b""


def test_the_revoked_certificate_is_accepted_where_no_crl_is_configured(gateway):
    # The twin: the same certificate on the listener without a CRL, so the CRL is what refused it.
    result = probe(gateway, "tls", calling="CTTLS", identity=passcode(), tls=gateway.pki.client_tls("revoked"))
    assert_accepted(result)


def test_tls_1_1_is_refused(gateway):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", gateway.port("tls")), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with context.wrap_socket(raw, server_hostname="localhost"):
                pass
    # The twin: the same handshake at TLS 1.2 completes.
    context12 = ssl.create_default_context(cafile=gateway.pki.path("ca.pem"))
    context12.load_cert_chain(gateway.pki.path("ct01.pem"), gateway.pki.path("ct01.key"))
    context12.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", gateway.port("tls")), timeout=5) as raw:
        with context12.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.2"


def test_plaintext_on_a_tls_listener_is_closed(gateway):
    assert_closed(probe(gateway, "tls", calling="CTTLS", identity=passcode()))


def test_optional_certificate_listener_rejects_a_cert_bound_ae_without_certificate(gateway):
    result = probe(gateway, "tls_optional", calling="CTTLS", identity=passcode(), tls=gateway.pki.client_tls(None))
    assert_rejected(result, CALLING)
    assert last_decision(gateway, listener="tls_optional", reason="calling-ae-no-certificate")


def test_optional_certificate_listener_accepts_the_bound_certificate(gateway):
    result = probe(gateway, "tls_optional", calling="CTTLS", identity=passcode(), tls=gateway.pki.client_tls("ct01"))
    assert_accepted(result)


# ---------------------------------------------------------------------------------------
# Not DICOM
# ---------------------------------------------------------------------------------------


def _raw_exchange(port, payload):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


@pytest.mark.parametrize("payload,reason", [
    (b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n", "not-dicom"),
    (bytes.fromhex("160301020001") + b"\x00" * 64, "tls-on-plain-listener"),
    (b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00", "unexpected-pdu-type"),
])
def test_bytes_that_are_not_an_association_request_are_closed_without_reaching_the_upstream(gateway, payload, reason):
    gateway.upstream.clear()
    assert _raw_exchange(gateway.port("plain"), payload) == b""
    assert last_decision(gateway, listener="plain", verdict="close", reason=reason)
    assert gateway.upstream.associations == [] and bytes(gateway.upstream.raw) == b""


# ---------------------------------------------------------------------------------------
# What the upstream sees, and what comes back
# ---------------------------------------------------------------------------------------


def test_forwarded_request_carries_no_identity(gateway):
    gateway.upstream.clear()
    assert_accepted(probe(gateway, "plain", identity=passcode(positive=True)))
    assert_accepted(probe(gateway, "plain", identity=jwt(gateway.idp.token())))
    assert len(gateway.upstream.associations) == 2
    assert all(a["user_identity"] is None for a in gateway.upstream.associations)
    raw = bytes(gateway.upstream.raw)
    assert PASSCODES["ct01tech"].encode() not in raw and b"ct01tech" not in raw


def test_pass_through_listener_forwards_identity_over_tls_to_an_upstream_that_checks_it(gateway):
    gateway.identity_upstream.clear()
    assert_accepted(probe(gateway, "pass_through", identity=passcode()))
    received = gateway.identity_upstream.associations[-1]["user_identity"]
    assert received is not None and received.primary_field == b"ct01tech"


def test_positive_response_is_added_when_the_identity_was_accepted(gateway):
    result = probe(gateway, "plain", identity=passcode(positive=True))
    assert_accepted(result)
    assert result["identity_response"] is not None and result["identity_response"]["present"], result


def test_no_positive_response_is_added_when_none_was_requested(gateway):
    result = probe(gateway, "plain", identity=passcode(positive=False))
    assert_accepted(result)
    assert not (result["identity_response"] or {}).get("present"), result


def storescu(port, dicom_file, *identity, calling="CT01"):
    if not Path(STORESCU).exists():
        pytest.skip("DCMTK storescu is not installed")
    cmd = [STORESCU, "-aet", calling, "-aec", CALLED_AE, "-to", "10", "-ta", "10", *identity,
           "127.0.0.1", str(port), dicom_file]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_storescu_asking_for_a_positive_response_gets_one_through_the_gate(gateway, dicom_file):
    proc = storescu(gateway.port("plain"), dicom_file, "-usr", "ct01tech", "-pwd", PASSCODES["ct01tech"], "-rsp")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_storescu_asking_for_a_positive_response_fails_against_the_upstream_alone(gateway, dicom_file):
    # The twin: the PACS behind the gate ignores identity, as Orthanc does.
    proc = storescu(gateway.upstream.port, dicom_file, "-usr", "ct01tech", "-pwd", PASSCODES["ct01tech"], "-rsp")
    assert proc.returncode != 0
    assert "Positive response requested but none received" in proc.stdout + proc.stderr


def test_storescu_with_a_jwt_and_positive_response_stores(gateway, dicom_file, tmp_path):
    token = tmp_path / "token.jwt"
    token.write_text(gateway.idp.token())
    proc = storescu(gateway.port("plain"), dicom_file, "--jwt", str(token), "-rsp")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_storescu_with_a_wrong_passcode_prints_the_reject(gateway, dicom_file):
    proc = storescu(gateway.port("plain"), dicom_file, "-usr", "ct01tech", "-pwd", "wrong", "-rsp")
    assert proc.returncode != 0
    assert "Rejected Permanent" in proc.stdout + proc.stderr or "rejected" in (proc.stdout + proc.stderr).lower()


# ---------------------------------------------------------------------------------------
# Large requests
# ---------------------------------------------------------------------------------------


def _associate_with_contexts(port, count, identity=True):
    from pynetdicom import AE, AllStoragePresentationContexts
    from pynetdicom.pdu_primitives import UserIdentityNegotiation

    ae = AE(ae_title="CT01")
    ae.acse_timeout = 8
    syntaxes = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90"]
    for context in AllStoragePresentationContexts[:count]:
        ae.add_requested_context(context.abstract_syntax, syntaxes)
    ext = []
    if identity:
        user = UserIdentityNegotiation()
        user.user_identity_type = 2
        user.primary_field = b"ct01tech"
        user.secondary_field = PASSCODES["ct01tech"].encode()
        ext.append(user)
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED_AE, ext_neg=ext)
    established = assoc.is_established
    if established:
        assoc.release()
    return established, assoc


def test_request_with_128_presentation_contexts_passes(gateway):
    gateway.upstream.clear()
    established, _assoc = _associate_with_contexts(gateway.port("plain"), 128)
    assert established
    assert gateway.upstream.associations[-1]["contexts"] == 128
    line = last_decision(gateway, listener="plain", contexts="128")
    assert int(line["request_bytes"]) > 16384  # beyond nginx's default preread buffer


def test_request_with_128_presentation_contexts_and_no_identity_is_still_rejected(gateway):
    established, assoc = _associate_with_contexts(gateway.port("plain"), 128, identity=False)
    assert not established and assoc.is_rejected


# ---------------------------------------------------------------------------------------
# The decision log
# ---------------------------------------------------------------------------------------

FIELDS = ("time", "listener", "client_addr", "client_port", "tls_version", "client_cert_subject", "called_ae",
          "calling_ae", "user", "identity_type", "verdict", "reason", "reject", "upstream", "bytes_from_client",
          "bytes_to_client", "duration", "request_bytes")


def test_every_decision_is_one_json_line_with_every_field(gateway):
    assert_accepted(probe(gateway, "plain", identity=passcode(), dimse="store"))
    line = last_decision(gateway, listener="plain", verdict="accept", user="ct01tech")
    assert set(FIELDS) <= set(line)
    assert line["client_addr"] == "127.0.0.1" and int(line["client_port"]) > 0
    assert line["called_ae"] == CALLED_AE and line["calling_ae"] == "CT01"
    assert line["identity_type"] == "username_passcode" and line["reason"] == "authorized"
    assert line["upstream"] == "127.0.0.1:%d" % gateway.upstream.port
    assert line["bytes_from_client"] > 0 and line["bytes_to_client"] > 0 and line["duration"] >= 0
    refused = last_decision(gateway, verdict="reject")
    assert refused["upstream"] == "" and refused["reject"] in ("1/1/3", "1/1/7", "1/2/1")


def test_decisions_reach_the_journal_with_their_identifier(gateway):
    assert_rejected(probe(gateway, "plain", calling="JOURNAL1", identity=passcode()), CALLING)
    found = wait_for(lambda: [m for m in gateway.syslog.messages if '"calling_ae":"JOURNAL1"' in m])
    assert found and "dicom_gate:" in found[-1]
    json.loads(found[-1][found[-1].index("{"):])


def test_no_secret_appears_in_any_log(gateway):
    # Run last in this file: every passcode, token and hash used so far must be absent.
    idp = gateway.idp
    tokens = [idp.token(), *_bad_tokens(idp).values()]
    for token in tokens[:3]:
        probe(gateway, "plain", identity=jwt(token))
    probe(gateway, "plain", identity=passcode(secret="Wrong-Secret-Attempt-91"))
    time.sleep(0.3)
    policy = json.loads(gateway.policy_text[gateway.policy_text.index("{"):].rstrip().rstrip(";"))
    hashes = [u["hash"] for u in policy["users"].values() if "hash" in u] + [policy["dummy_hash"]]
    secrets = list(PASSCODES.values()) + ["Wrong-Secret-Attempt-91"] + hashes + [h.split("$")[3] for h in hashes]
    secrets += [t.split(".")[2] for t in tokens if t.count(".") == 2 and t.split(".")[2]]
    logs = {"decisions": gateway.log_file.read_text(), "journal": "\n".join(gateway.syslog.messages),
            "error log": gateway.nginx.error_log()}
    assert len(hashes) >= 3
    for name, text in logs.items():
        for secret in secrets:
            assert secret not in text, "a secret appears in the %s" % name


def test_workers_never_exited_abnormally(gateway):
    errors = gateway.nginx.error_log()
    assert "exited on signal" not in errors and "js exception" not in errors
    assert "[alert]" not in errors and "[emerg]" not in errors


# ---------------------------------------------------------------------------------------
# The module, as a playbook would use it
# ---------------------------------------------------------------------------------------


def test_dicom_association_module_stores_through_the_gate(gateway):
    args = {"host": "127.0.0.1", "port": gateway.port("plain"), "called_ae": CALLED_AE, "calling_ae": "CT01",
            "dimse": "store", "expect": "accepted",
            "identity": {"type": "username_passcode", "username": "ct01tech", "passcode": PASSCODES["ct01tech"]}}
    rc, output, data = run_module("dicom_association", args)
    assert rc == 0 and data and data["outcome"] == "accepted", output
    assert PASSCODES["ct01tech"] not in output


def test_dicom_association_module_reports_the_gates_identity_reject(gateway):
    args = {"host": "127.0.0.1", "port": gateway.port("plain"), "called_ae": CALLED_AE, "calling_ae": "CT01",
            "dimse": "store", "expect": "rejected",
            "identity": {"type": "username_passcode", "username": "ct01tech", "passcode": "wrong-one"}}
    rc, output, data = run_module("dicom_association", args)
    assert rc == 0 and data["outcome"] == "rejected", output
    assert (data["reject"]["result"], data["reject"]["source"], data["reject"]["reason"]) == IDENTITY
