# Copyright: dicomsec.hardening contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Build the policy that nginx_stream_proxy's association gate (dicom_gate.js) reads.

Three filters:

- ``dicom_gateway_pbkdf2``: a salted PBKDF2-HMAC-SHA256 hash of a passcode, in the form the
  gate verifies with njs WebCrypto, reusing a current hash that still matches so that a second
  run renders the same file;
- ``dicom_gateway_jwks_to_pem``: a JWKS document's signing keys as PEM, because njs 0.7.9 cannot
  import a JWK;
- ``dicom_gateway_policy``: the whole policy (listeners, modalities, users with hashes, JWT keys)
  as data, for ``export default {{ policy | to_json }};``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: dicom_gateway_policy
short_description: Build the association gate policy of the nginx_stream_proxy role
version_added: 0.2.0
description:
  - Turns the role's listeners, modalities, users and JWT settings into the policy that the
    gate (C(dicom_gate.js)) reads when nginx loads its configuration.
  - Passcodes become salted PBKDF2-HMAC-SHA256 hashes (C(dicom_gateway_pbkdf2)); a hash in
    O(current) that still matches a passcode, with the same iterations, is kept, so a second
    run renders the same file. No passcode appears in the result.
  - JWKS keys become PEM (C(dicom_gateway_jwks_to_pem)).
  - Every error names the variable and the entry at fault.
options:
  _input:
    description: C(nginx_stream_proxy_listeners).
    type: list
    elements: dict
    required: true
  modalities:
    description: C(nginx_stream_proxy_modalities).
    type: list
    elements: dict
  users:
    description: C(nginx_stream_proxy_users).
    type: list
    elements: dict
  jwt:
    description: C(nginx_stream_proxy_jwt); empty disables type 5.
    type: dict
  iterations:
    description: PBKDF2 iterations for new hashes.
    type: int
    default: 100000
  current:
    description: The policy rendered before (its text or its data), whose hashes are reused.
    type: raw
"""

EXAMPLES = r"""
- name: Render the gate's policy, keeping the hashes that still match
  ansible.builtin.copy:
    content: "export default {{ nginx_stream_proxy_listeners | dicomsec.hardening.dicom_gateway_policy(
      modalities=nginx_stream_proxy_modalities, users=nginx_stream_proxy_users,
      jwt=nginx_stream_proxy_jwt, current=current_policy) | to_json }};\n"
    dest: /etc/nginx/dicom-gate/dicom_gate_policy.js
    mode: "0600"
  no_log: true
"""

RETURN = r"""
_value:
  description: The policy, a dict with C(version), C(listeners), C(modalities), C(users), C(jwt), C(dummy_hash).
  type: dict
"""

HASH_SCHEME = "pbkdf2-sha256"
SALT_BYTES = 16  # njs's WebCrypto refuses PBKDF2 salts shorter than 16 bytes
KEY_BYTES = 32
MIN_ITERATIONS = 10000
IDENTITY_TYPES = {"username": 1, "username_passcode": 2, "jwt": 5}
JWT_ALGORITHMS = ("RS256", "ES256")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _derive(passcode, salt, iterations):
    return hashlib.pbkdf2_hmac("sha256", passcode.encode("utf-8"), salt, iterations, KEY_BYTES)


def pbkdf2_verify(passcode, hashed):
    """True when ``hashed`` (the gate's format) is ``passcode``'s hash."""
    try:
        scheme, iterations, salt, key = str(hashed).split("$")
        if scheme != HASH_SCHEME:
            return False
        expected = base64.b64decode(key, validate=True)
        actual = hashlib.pbkdf2_hmac("sha256", passcode.encode("utf-8"), base64.b64decode(salt, validate=True),
                                     int(iterations), len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _hash_error(hashed):
    parts = str(hashed).split("$")
    if len(parts) != 4 or parts[0] != HASH_SCHEME:
        return "is not %s$<iterations>$<salt>$<key>" % HASH_SCHEME
    try:
        iterations = int(parts[1])
        salt = base64.b64decode(parts[2], validate=True)
        key = base64.b64decode(parts[3], validate=True)
    except ValueError:
        return "has an iteration count or base64 field that does not parse"
    if iterations < MIN_ITERATIONS:
        return "has %d iterations, fewer than %d" % (iterations, MIN_ITERATIONS)
    if len(salt) < SALT_BYTES:
        return "has a %d-byte salt; the gate needs at least %d" % (len(salt), SALT_BYTES)
    if len(key) < 16:
        return "has a %d-byte key, too short" % len(key)
    return None


def dicom_gateway_pbkdf2(passcode, iterations=100000, salt=None, current=None):
    """Hash ``passcode`` as ``pbkdf2-sha256$<iterations>$<salt b64>$<key b64>``.

    ``current``: a hash to keep if it matches ``passcode`` with ``iterations``.
    ``salt``: bytes or text for a reproducible hash (tests); a fresh random one by default.
    """
    if not isinstance(passcode, str) or not passcode:
        raise AnsibleFilterError("dicom_gateway_pbkdf2: the passcode must be a non-empty string")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < MIN_ITERATIONS:
        raise AnsibleFilterError("dicom_gateway_pbkdf2: iterations must be an integer >= %d" % MIN_ITERATIONS)
    if current and str(current).split("$")[1:2] == [str(iterations)] and pbkdf2_verify(passcode, current):
        return str(current)
    if salt is None:
        salt = os.urandom(SALT_BYTES)
    elif isinstance(salt, str):
        salt = salt.encode("utf-8")
    if len(salt) < SALT_BYTES:
        raise AnsibleFilterError("dicom_gateway_pbkdf2: the salt must be at least %d bytes" % SALT_BYTES)
    return "%s$%d$%s$%s" % (HASH_SCHEME, iterations, _b64(salt), _b64(_derive(passcode, salt, iterations)))


def _b64url_int(value, where):
    try:
        return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")
    except (ValueError, TypeError) as exc:
        raise AnsibleFilterError("%s: %s" % (where, exc)) from None


def dicom_gateway_jwks_to_pem(jwks, name="nginx_stream_proxy_jwt.jwks"):
    """Return the signing keys of a JWKS document (dict or JSON text) as [{kid, alg, pem}]."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(jwks, str):
        try:
            jwks = json.loads(jwks)
        except ValueError as exc:
            raise AnsibleFilterError("%s is not JSON: %s" % (name, exc)) from None
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise AnsibleFilterError("%s must be a JWKS document: an object with a list of keys" % name)
    out = []
    for index, jwk in enumerate(jwks["keys"]):
        where = "%s.keys[%d]" % (name, index)
        if not isinstance(jwk, dict):
            raise AnsibleFilterError("%s is not an object" % where)
        if jwk.get("use", "sig") != "sig":
            continue  # an encryption key signs nothing the gate verifies
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AnsibleFilterError("%s has no kid; the gate picks keys by kid" % where)
        where = "%s (kid %s)" % (where, kid)
        kty = jwk.get("kty")
        if kty == "RSA":
            alg = jwk.get("alg", "RS256")
            if alg != "RS256":
                raise AnsibleFilterError("%s: alg %s is not supported (RS256 for RSA keys)" % (where, alg))
            key = rsa.RSAPublicNumbers(_b64url_int(jwk.get("e", ""), where),
                                       _b64url_int(jwk.get("n", ""), where)).public_key()
            if key.key_size < 2048:
                raise AnsibleFilterError("%s: an RSA key of %d bits is too weak (2048 at least)" % (where, key.key_size))
        elif kty == "EC":
            alg = jwk.get("alg", "ES256")
            if jwk.get("crv") != "P-256" or alg != "ES256":
                raise AnsibleFilterError("%s: only P-256 with ES256 is supported for EC keys" % where)
            try:
                key = ec.EllipticCurvePublicNumbers(_b64url_int(jwk.get("x", ""), where),
                                                    _b64url_int(jwk.get("y", ""), where),
                                                    ec.SECP256R1()).public_key()
            except ValueError as exc:
                raise AnsibleFilterError("%s: %s" % (where, exc)) from None
        else:
            # A symmetric (oct) key would let anyone holding it mint tokens, and HMAC is what
            # an algorithm-confusion attack asks for: the gate verifies signatures only.
            raise AnsibleFilterError("%s: key type %r is not supported (RSA or EC public keys)" % (where, kty))
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        out.append({"kid": kid, "alg": alg, "pem": pem.decode("ascii")})
    return out


def _pem_key(entry, where):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        key = serialization.load_pem_public_key(str(entry.get("pem", "")).encode("ascii"))
    except (ValueError, UnicodeError) as exc:
        raise AnsibleFilterError("%s.pem is not a PEM public key: %s" % (where, exc)) from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        alg = "RS256"
    elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        alg = "ES256"
    else:
        raise AnsibleFilterError("%s.pem must be an RSA (2048 bits or more) or P-256 public key" % where)
    if entry.get("alg", alg) != alg:
        raise AnsibleFilterError("%s.alg %s does not fit its key (%s)" % (where, entry["alg"], alg))
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"kid": str(entry.get("kid", "")), "alg": alg, "pem": pem.decode("ascii")}


def read_policy(current):
    """The data of a rendered policy module (``export default {...};``), or {}."""
    if not current:
        return {}
    if isinstance(current, dict):
        return current
    text = re.sub(r"(?m)^\s*//.*$", "", str(current)).strip()
    text = re.sub(r"^export\s+default\s+", "", text).rstrip().rstrip(";")
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _ae_list(value, where):
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise AnsibleFilterError("%s must be a list of AE titles" % where)
    for ae in value:
        if len(ae) > 16 or ae != ae.strip() or any(c == "\\" or not " " <= c <= "~" for c in ae):
            raise AnsibleFilterError("%s: %r is not an AE title (1-16 printable characters, no backslash, "
                                     "no leading or trailing space)" % (where, ae))
    return list(value)


def dicom_gateway_policy(listeners, modalities=None, users=None, jwt=None, iterations=100000, current=None):
    previous = read_policy(current)
    old_users = previous.get("users") or {}
    policy = {"version": 1, "listeners": {}, "modalities": {}, "users": {}, "jwt": None}

    for index, modality in enumerate(modalities or []):
        where = "nginx_stream_proxy_modalities[%d]" % index
        ae = _ae_list([modality.get("ae")], where + ".ae")[0]
        if ae in policy["modalities"]:
            raise AnsibleFilterError("%s: AE title %s is listed twice" % (where, ae))
        policy["modalities"][ae] = {"sources": list(modality.get("sources") or []),
                                    "subjects": list(modality.get("subjects") or [])}

    for index, user in enumerate(users or []):
        where = "nginx_stream_proxy_users[%d]" % index
        name = user.get("name")
        if not isinstance(name, str) or not name:
            raise AnsibleFilterError("%s.name must be a non-empty string" % where)
        where = "nginx_stream_proxy_users[%d] (%s)" % (index, name)
        if name in policy["users"]:
            raise AnsibleFilterError("%s: the user is listed twice" % where)
        aes = _ae_list(user.get("calling_aes") or [], where + ".calling_aes")
        for ae in aes:
            if ae not in policy["modalities"]:
                raise AnsibleFilterError("%s.calling_aes names %s, which is not in nginx_stream_proxy_modalities"
                                         % (where, ae))
        entry = {"calling_aes": aes}
        if user.get("passcode") and user.get("passcode_hash"):
            raise AnsibleFilterError("%s has both passcode and passcode_hash; give one" % where)
        if user.get("passcode_hash"):
            error = _hash_error(user["passcode_hash"])
            if error:
                raise AnsibleFilterError("%s.passcode_hash %s" % (where, error))
            entry["hash"] = user["passcode_hash"]
        elif user.get("passcode"):
            entry["hash"] = dicom_gateway_pbkdf2(user["passcode"], iterations,
                                                 current=(old_users.get(name) or {}).get("hash"))
        policy["users"][name] = entry

    # An unknown user's passcode is checked against this, so a refusal takes as long as for a
    # known user; kept from the current policy for a stable file.
    dummy = previous.get("dummy_hash")
    if not dummy or dummy.split("$")[1:2] != [str(iterations)]:
        dummy = dicom_gateway_pbkdf2(_b64(os.urandom(18)), iterations)
    policy["dummy_hash"] = dummy

    if jwt:
        keys = []
        for index, entry in enumerate(jwt.get("keys") or []):
            keys.append(_pem_key(entry, "nginx_stream_proxy_jwt.keys[%d]" % index))
        if jwt.get("jwks"):
            keys.extend(dicom_gateway_jwks_to_pem(jwt["jwks"]))
        if not keys:
            raise AnsibleFilterError("nginx_stream_proxy_jwt has neither keys nor jwks")
        kids = [k["kid"] for k in keys]
        if len(keys) > 1 and (not all(kids) or len(set(kids)) != len(kids)):
            raise AnsibleFilterError("nginx_stream_proxy_jwt: with several keys each needs its own kid")
        audience = jwt.get("audience")
        audiences = [audience] if isinstance(audience, str) else list(audience or [])
        if not jwt.get("issuer") or not audiences:
            raise AnsibleFilterError("nginx_stream_proxy_jwt needs issuer and audience")
        skew = jwt.get("clock_skew", 60)
        if isinstance(skew, bool) or not isinstance(skew, int) or not 0 <= skew <= 300:
            raise AnsibleFilterError("nginx_stream_proxy_jwt.clock_skew must be 0-300 seconds")
        policy["jwt"] = {"issuer": jwt["issuer"], "audiences": audiences, "clock_skew": skew,
                         "username_claim": jwt.get("username_claim", "sub"), "keys": keys}

    for index, listener in enumerate(listeners or []):
        name = listener.get("name")
        where = "nginx_stream_proxy_listeners[%d]" % index
        if not isinstance(name, str) or not _NAME.match(name):
            raise AnsibleFilterError("%s.name must match %s (it names nginx zones and upstreams)"
                                     % (where, _NAME.pattern))
        where = "nginx_stream_proxy_listeners[%d] (%s)" % (index, name)
        if name in policy["listeners"]:
            raise AnsibleFilterError("%s: the listener name is used twice" % where)
        called = _ae_list(listener.get("called_aes") or [], where + ".called_aes")
        if not called:
            raise AnsibleFilterError("%s.called_aes must name the AE titles of the PACS behind it" % where)
        calling = listener.get("calling_aes")
        if calling is not None:
            for ae in _ae_list(calling, where + ".calling_aes"):
                if ae not in policy["modalities"]:
                    raise AnsibleFilterError("%s.calling_aes names %s, which is not in "
                                             "nginx_stream_proxy_modalities" % (where, ae))
        identity = listener.get("identity") or {}
        types = identity.get("types", ["username_passcode", "jwt"])
        for value in types:
            if value not in IDENTITY_TYPES:
                raise AnsibleFilterError("%s.identity.types: %r is not one of %s"
                                         % (where, value, ", ".join(IDENTITY_TYPES)))
        if "jwt" in types and identity.get("required", True) and not policy["jwt"] and types == ["jwt"]:
            raise AnsibleFilterError("%s accepts only JWT identities but nginx_stream_proxy_jwt is empty" % where)
        upstream = listener.get("upstream") or {}
        upstream_tls = bool((upstream.get("tls") or {}).get("enabled"))
        if identity.get("pass_through") and not upstream_tls:
            raise AnsibleFilterError("%s.identity.pass_through needs upstream.tls.enabled: the identity "
                                     "(a passcode or token) must not cross the network in clear" % where)
        policy["listeners"][name] = {
            "called_aes": called,
            "calling_aes": list(calling) if calling is not None else None,
            "identity": {"required": bool(identity.get("required", True)),
                         "types": [IDENTITY_TYPES[t] for t in types],
                         "pass_through": bool(identity.get("pass_through", False))},
            "upstream_tls": upstream_tls,
            "max_request_bytes": int(listener.get("max_request_bytes", 65530)),
        }
    return policy


class FilterModule:
    def filters(self):
        return {
            "dicom_gateway_pbkdf2": dicom_gateway_pbkdf2,
            "dicom_gateway_jwks_to_pem": dicom_gateway_jwks_to_pem,
            "dicom_gateway_policy": dicom_gateway_policy,
        }
