# -*- coding: utf-8 -*-
"""The filters that build the association gate's policy: hashes, JWKS conversion, checks."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ansible.errors import AnsibleFilterError
from ansible_collections.dicomsec.hardening.plugins.filter.dicom_gateway import (
    dicom_gateway_jwks_to_pem,
    dicom_gateway_pbkdf2,
    dicom_gateway_policy,
    pbkdf2_verify,
)


def _b64url_int(value):
    return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


def test_pbkdf2_hash_is_what_hashlib_derives_with_a_16_byte_salt():
    hashed = dicom_gateway_pbkdf2("s3cret-passcode", iterations=20000)
    scheme, iterations, salt, key = hashed.split("$")
    assert scheme == "pbkdf2-sha256" and iterations == "20000"
    assert len(base64.b64decode(salt)) == 16
    assert base64.b64decode(key) == hashlib.pbkdf2_hmac("sha256", b"s3cret-passcode", base64.b64decode(salt), 20000)
    assert "s3cret-passcode" not in hashed


def test_pbkdf2_salts_differ_between_users_with_the_same_passcode():
    assert dicom_gateway_pbkdf2("same", 20000) != dicom_gateway_pbkdf2("same", 20000)


def test_pbkdf2_keeps_a_current_hash_that_still_matches():
    current = dicom_gateway_pbkdf2("passcode-one", 20000)
    assert dicom_gateway_pbkdf2("passcode-one", 20000, current=current) == current


def test_pbkdf2_replaces_a_current_hash_after_a_passcode_or_iteration_change():
    current = dicom_gateway_pbkdf2("passcode-one", 20000)
    assert dicom_gateway_pbkdf2("passcode-two", 20000, current=current) != current
    changed = dicom_gateway_pbkdf2("passcode-one", 30000, current=current)
    assert changed != current and pbkdf2_verify("passcode-one", changed)


def test_pbkdf2_refuses_short_salts_and_few_iterations():
    with pytest.raises(AnsibleFilterError, match="16 bytes"):
        dicom_gateway_pbkdf2("x", 20000, salt="short")
    with pytest.raises(AnsibleFilterError, match="iterations"):
        dicom_gateway_pbkdf2("x", 1000)


def test_jwks_rsa_key_becomes_a_pem_that_verifies_the_idps_signature():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = key.public_key().public_numbers()
    jwks = {"keys": [{"kty": "RSA", "kid": "k1", "n": _b64url_int(numbers.n), "e": _b64url_int(numbers.e)},
                     {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}]}
    converted = dicom_gateway_jwks_to_pem(json.dumps(jwks))
    assert [(k["kid"], k["alg"]) for k in converted] == [("k1", "RS256")]
    public = serialization.load_pem_public_key(converted[0]["pem"].encode())
    signature = key.sign(b"payload", padding.PKCS1v15(), hashes.SHA256())
    public.verify(signature, b"payload", padding.PKCS1v15(), hashes.SHA256())


def test_jwks_ec_p256_key_becomes_es256():
    key = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    jwk = {"kty": "EC", "kid": "e1", "crv": "P-256", "x": _b64url_int(key.x), "y": _b64url_int(key.y)}
    assert dicom_gateway_jwks_to_pem({"keys": [jwk]})[0]["alg"] == "ES256"


@pytest.mark.parametrize("jwk,message", [
    ({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}, "not supported"),
    ({"kty": "RSA", "kid": "r", "alg": "RS512", "n": "AQAB", "e": "AQAB"}, "RS512"),
    ({"kty": "RSA", "n": "AQAB", "e": "AQAB"}, "no kid"),
    ({"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"}, "P-256"),
])
def test_jwks_keys_the_gate_cannot_use_are_refused_by_name(jwk, message):
    with pytest.raises(AnsibleFilterError, match=message):
        dicom_gateway_jwks_to_pem({"keys": [jwk]})


def _policy(**overrides):
    listeners = overrides.pop(
        "listeners", [{"name": "pacs", "port": 11112, "called_aes": ["PACS01"], "upstream": {"host": "h", "port": 1}}]
    )
    args = {
        "modalities": [{"ae": "CT01", "sources": ["198.51.100.10/32"]}],
        "users": [{"name": "tech", "passcode": "Top-Secret-1", "calling_aes": ["CT01"]}],
        "iterations": 20000,
    }
    args.update(overrides)
    return dicom_gateway_policy(listeners, **args)


def test_policy_holds_hashes_and_never_a_passcode():
    policy = _policy()
    text = json.dumps(policy)
    assert "Top-Secret-1" not in text
    assert pbkdf2_verify("Top-Secret-1", policy["users"]["tech"]["hash"])
    assert policy["listeners"]["pacs"]["identity"] == {"required": True, "types": [2, 5], "pass_through": False}


def test_policy_rendered_twice_from_its_current_text_is_the_same():
    first = _policy()
    again = _policy(current="// managed\nexport default %s;\n" % json.dumps(first))
    assert again == first


@pytest.mark.parametrize("overrides,message", [
    ({"users": [{"name": "tech", "passcode": "x", "calling_aes": ["MR99"]}]}, r"nginx_stream_proxy_users\[0\] \(tech\)"),
    ({"users": [{"name": "t", "passcode": "x", "passcode_hash": "y"}]}, "both passcode and passcode_hash"),
    ({"users": [{"name": "t", "passcode_hash": "pbkdf2-sha256$20000$c2hvcnQ=$AAAAAAAAAAAAAAAAAAAAAA=="}]}, "salt"),
    ({"listeners": [{"name": "Bad-Name", "called_aes": ["P"]}]}, r"nginx_stream_proxy_listeners\[0\]\.name"),
    ({"listeners": [{"name": "pacs", "called_aes": ["A" * 17]}]}, "not an AE title"),
    ({"listeners": [{"name": "pacs", "called_aes": ["P"], "identity": {"pass_through": True},
                     "upstream": {"host": "h", "port": 1}}]}, "pass_through needs upstream.tls"),
    ({"listeners": [{"name": "pacs", "called_aes": ["P"], "identity": {"types": ["kerberos"]}}]}, "kerberos"),
    ({"jwt": {"issuer": "i", "audience": "a"}}, "neither keys nor jwks"),
])
def test_policy_errors_name_the_variable(overrides, message):
    with pytest.raises(AnsibleFilterError, match=message):
        _policy(**overrides)
