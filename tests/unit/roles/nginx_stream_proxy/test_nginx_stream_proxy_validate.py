"""nginx_stream_proxy refuses bad input with a clear error before it changes anything.

Each case applies the role to localhost with one bad variable, limited to its
checks (argument_specs, then tasks/validate.yml), and checks that the play stops
with a message naming the variable and with nothing changed. Each refusal has an
accepted twin: the same input made valid passes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from role_validation import failed_tasks, run_batch, validate_tasks

REPO = Path(__file__).resolve().parents[4]
PASSCODE = "lab-only-Unit7pRt2mQx9z"

LISTENER = {
    "name": "pacs", "port": 11112, "called_aes": ["PACS01"],
    "tls": {"certificate": "/etc/ssl/gw.crt", "key": "/etc/ssl/gw.key"},
    "client_certificate": {"ca": "/etc/ssl/ca.crt"},
    "upstream": {"host": "198.18.10.81", "port": 4242},
}
VALID = {
    "nginx_stream_proxy_listeners": [LISTENER],
    "nginx_stream_proxy_modalities": [{"ae": "CT01", "sources": ["198.18.10.0/24"]}],
    "nginx_stream_proxy_users": [{"name": "ct01tech", "passcode": PASSCODE, "calling_aes": ["CT01"]}],
    # The minimum, so each case derives its hashes quickly.
    "nginx_stream_proxy_pbkdf2_iterations": 10000,
}


def listener(**changes):
    return {**VALID, "nginx_stream_proxy_listeners": [{**LISTENER, **changes}]}


def user(**changes):
    return {**VALID, "nginx_stream_proxy_users": [{"name": "ct01tech", "calling_aes": ["CT01"], **changes}]}


def modality(**changes):
    return {**VALID, "nginx_stream_proxy_modalities": [{"ae": "CT01", **changes}]}


# name -> (variables over VALID, text the error must contain; None: must pass)
CASES = {
    "valid": ({}, None),
    "listener_name_with_a_dash": (listener(name="pacs-1"), "nginx_stream_proxy_listeners[0] (pacs-1).name must match"),
    "listener_names_twice": ({"nginx_stream_proxy_listeners": [LISTENER, {**LISTENER, "port": 11113}]},
                             "(pacs).name is used by an earlier listener"),
    "two_listeners_on_one_port": ({"nginx_stream_proxy_listeners": [LISTENER, {**LISTENER, "name": "other"}]},
                                  "0.0.0.0 port 11112 is already a listener"),
    "port_0": (listener(port=0), "(pacs).port 0 must be 1-65535"),
    "listen_address_is_a_name": (listener(addresses=["gateway.example"]),
                                 '(pacs).addresses: "gateway.example" is not an IP address'),
    "ipv6_listen_address": (listener(addresses=["2001:db8:d1c0:10::80"]), None),
    "allow_prefix_with_host_bits": (listener(allow=["198.18.10.1/24"]),
                                    '(pacs).allow: "198.18.10.1/24" is not an address or a prefix'),
    "deny_prefix_of_colons": (listener(deny=[":::::"]), '(pacs).deny: ":::::" is not an address or a prefix'),
    "allow_prefixes": (listener(allow=["198.18.10.0/24", "2001:db8:d1c0:10::/64"], deny=["198.18.10.99"]), None),
    "called_ae_too_long": (listener(called_aes=["PACS-TITLE-IS-017"]), '(pacs).called_aes: "PACS-TITLE-IS-017" cannot be a DICOM AE title'),
    "called_ae_with_backslash": (listener(called_aes=["PACS\\1"]), "cannot be a DICOM AE title"),
    "called_ae_of_16": (listener(called_aes=["A" * 16]), None),
    "no_called_ae": (listener(called_aes=[]), "(pacs).called_aes must name the AE titles"),
    "calling_ae_no_modality": (listener(calling_aes=["MR02"]), "(pacs).calling_aes: MR02 is not in nginx_stream_proxy_modalities"),
    "client_certificate_without_tls": ({**VALID, "nginx_stream_proxy_listeners": [
        {k: v for k, v in LISTENER.items() if k != "tls"}]}, "(pacs).client_certificate is set but the listener has no tls"),
    "plaintext_listener": ({**VALID, "nginx_stream_proxy_listeners": [
        {k: v for k, v in LISTENER.items() if k not in ("tls", "client_certificate")}]}, None),
    "tls_1_1": (listener(tls={**LISTENER["tls"], "protocols": ["TLSv1.1", "TLSv1.2"]}),
                "(pacs).tls.protocols: TLSv1.1 is not one of TLSv1.2, TLSv1.3"),
    "default_tls_1_1": ({"nginx_stream_proxy_tls_protocols": ["TLSv1.1", "TLSv1.2"]},
                        "nginx_stream_proxy_tls_protocols (TLSv1.1, TLSv1.2) may only hold"),
    "upstream_host_with_a_space": (listener(upstream={"host": "pacs one", "port": 4242}),
                                   '(pacs).upstream.host "pacs one" is not an IP address or a DNS name'),
    "upstream_host_bad_address": (listener(upstream={"host": "198.18.10.300", "port": 4242}),
                                  "is not an IP address or a DNS name"),
    "upstream_host_name": (listener(upstream={"host": "pacs.hospital.example", "port": 4242}), None),
    "upstream_port_70000": (listener(upstream={"host": "198.18.10.81", "port": 70000}), "(pacs).upstream.port 70000 must be 1-65535"),
    "upstream_tls_without_ca": (listener(upstream={"host": "198.18.10.81", "port": 4242, "tls": {"enabled": True}}),
                                "(pacs).upstream.tls.ca is needed"),
    "max_request_too_small": (listener(max_request_bytes=100), "(pacs).max_request_bytes must be 1024-1048576"),
    "zero_timeout": (listener(timeouts={"preread": 0}), "(pacs).timeouts.preread must be 1-86400 seconds"),
    "modality_ae_with_control_character": (modality(ae="CT\x0101"), "nginx_stream_proxy_modalities[0].ae"),
    "modality_twice": ({**VALID, "nginx_stream_proxy_modalities": [{"ae": "CT01"}, {"ae": "CT01"}]},
                       "nginx_stream_proxy_modalities[1].ae CT01 is listed more than once"),
    "modality_source_not_a_prefix": (modality(sources=["ct01.example"]),
                                     '(CT01).sources: "ct01.example" is not an address or a prefix'),
    "modality_subject_not_a_dn": (modality(subjects=["ct01"]), '(CT01).subjects: "ct01" is not a certificate subject'),
    "duplicate_users": ({**VALID, "nginx_stream_proxy_users": VALID["nginx_stream_proxy_users"] * 2},
                        "nginx_stream_proxy_users[1] (ct01tech): the user is listed more than once"),
    "empty_passcode": (user(passcode=""), "nginx_stream_proxy_users[0] (ct01tech).passcode is empty"),
    "short_passcode": (user(passcode="Sh0rt-pass"), "(ct01tech).passcode is shorter than 12 characters"),
    "passcode_is_the_user_name": (user(name="radiology-tech", passcode="Radiology-Tech"),
                                  "(radiology-tech).passcode is the user name or a well-known passcode"),
    "passcode_on_the_denylist": (user(passcode="123456789012"), "is the user name or a well-known passcode"),
    "passcode_and_hash": (user(passcode=PASSCODE, passcode_hash="pbkdf2-sha256$10000$x$y"), "has both passcode and passcode_hash"),
    "malformed_hash": (user(passcode_hash="md5$abc"), "passcode_hash is not pbkdf2-sha256"),
    "user_without_passcode": (user(), None),
    "user_on_no_modality": (user(passcode=PASSCODE, calling_aes=["MR02"]),
                            '(ct01tech).calling_aes: "MR02" is not in nginx_stream_proxy_modalities'),
    "malformed_pem": ({"nginx_stream_proxy_jwt": {"issuer": "https://idp", "audience": "gw", "keys": [
        {"kid": "k1", "pem": "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n"}]}},
        "nginx_stream_proxy_jwt.keys[0].pem is not a PEM public key"),
    "malformed_jwks": ({"nginx_stream_proxy_jwt": {"issuer": "https://idp", "audience": "gw", "jwks": {"keys": "none"}}},
                       "nginx_stream_proxy_jwt.jwks must be a JWKS document"),
    "symmetric_jwks_key": ({"nginx_stream_proxy_jwt": {"issuer": "https://idp", "audience": "gw",
                                                       "jwks": {"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}}},
                           "key type 'oct' is not supported"),
    "jwt_without_issuer": ({"nginx_stream_proxy_jwt": {"audience": "gw", "jwks": {"keys": []}}},
                           "nginx_stream_proxy_jwt has neither keys nor jwks"),
    "too_few_iterations": ({"nginx_stream_proxy_pbkdf2_iterations": 1000}, "must be 10000-2000000"),
    "no_listener": ({"nginx_stream_proxy_listeners": []}, "nginx_stream_proxy_listeners must name at least one listener"),
    "worker_limits_sized_for_a_large_estate": ({"nginx_stream_proxy_worker_connections": 65536,
                                                "nginx_stream_proxy_worker_rlimit_nofile": 131072}, None),
    "too_few_worker_connections": ({"nginx_stream_proxy_worker_connections": 16},
                                   "nginx_stream_proxy_worker_connections (16) must be 64-1048576"),
    "open_files_below_connections": ({"nginx_stream_proxy_worker_connections": 4096,
                                      "nginx_stream_proxy_worker_rlimit_nofile": 1024},
                                     "nginx_stream_proxy_worker_rlimit_nofile (1024) must be at least"),
    # Caught by meta/argument_specs.yml at the role's entry, naming the variable.
    "unknown_identity_type": (listener(identity={"types": ["kerberos"]}),
                              "Got no match for: kerberos found in nginx_stream_proxy_listeners -> identity"),
    "misspelled_listener_key": (listener(upstrem={"host": "x", "port": 1}), "upstrem"),
    "listener_without_upstream": ({**VALID, "nginx_stream_proxy_listeners": [
        {k: v for k, v in LISTENER.items() if k != "upstream"}]}, "upstream"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    # -vvv, as an operator debugging a run would see it: no secret may show there either.
    return run_batch(tmp_path_factory.mktemp("validate"), "nginx_stream_proxy",
                     {name: {**VALID, **overrides} for name, (overrides, _error) in CASES.items()},
                     tags="nginx_stream_proxy_validate", verbose=True)


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


def test_passcodes_never_appear_in_verbose_output(results):
    # -vvv, the way an operator debugging a run would see it.
    for name in ("valid", "short_passcode", "passcode_is_the_user_name", "duplicate_users", "user_on_no_modality"):
        out = results[name]["out"]
        for secret in (PASSCODE, "Sh0rt-pass", "Radiology-Tech"):
            assert secret not in out, name


def test_every_check_of_validate_yml_is_made_to_fail_by_some_case(results):
    failed_in = failed_tasks(results, CASES)
    untested = [t["name"] for t in validate_tasks("nginx_stream_proxy")
                if f"nginx_stream_proxy : {t['name']}" not in failed_in]
    assert not untested, untested
