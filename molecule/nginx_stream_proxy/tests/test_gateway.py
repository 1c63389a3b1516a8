"""nginx_stream_proxy: the gateway lets the authorized user in and turns every other attempt away.

Every association is a real one, made from the lab host that matters (the allowed
client, or the outside client, which holds a certificate the gateway trusts),
with the collection's dicomsec.hardening.dicom_association module and with
DCMTK's storescu. Each refusal is checked twice: in what the client received (the
A-ASSOCIATE-RJ, the TLS alert, the closed socket) and in the gateway's decision
log, whose line must name the reason. Every accepted case has refused twins.
JWTs are signed here with the identity provider's key that prepare made.
"""

import base64
import json
import os
import pathlib
import shlex
import time

import pytest
import testinfra
import yaml

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO_DIR = pathlib.Path(__file__).parents[1]
S = yaml.safe_load((SCENARIO_DIR / "vars" / "scenario.yml").read_text())
PKI = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "pki"

GW = S["gateway_address"]
PORT = S["gateway_port"]
PACS = S["pacs_address"]
PACS_AET = S["pacs_aet"]
CERTS = S["client_dir"]
USERS = {u["name"]: u for u in S["users"]}
PASSCODE = USERS["ct01tech"]["passcode"]
LOG = "/var/log/nginx/dicom-gate.log"
JAIL = "dicomsec-dicom-gate"
IDENTITY_REJECT = {"result": 1, "source": 2, "reason": 1}
CALLING_REJECT = {"result": 1, "source": 1, "reason": 3}
CALLED_REJECT = {"result": 1, "source": 1, "reason": 7}

# Every token a test sends, for the final grep of the logs.
TOKENS = []


@pytest.fixture(scope="module", autouse=True)
def fresh_jail():
    """A jail with no bans and no counted failures: an earlier run of these tests must not
    have banned the allowed client, whose refusal tests count as failures too."""
    host("ngx-gw").check_output(f"fail2ban-client reload --restart --unban {JAIL}")


def host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def _tls(kind):
    if kind is None:
        return None
    tls = {"enabled": True, "ca_file": f"{CERTS}/lab-ca.crt"}
    if kind == "client":
        tls.update(cert_file=f"{CERTS}/client.crt", key_file=f"{CERTS}/client.key")
    elif kind == "rogue":
        tls.update(cert_file=f"{CERTS}/rogue.crt", key_file=f"{CERTS}/rogue.key")
    return tls


def passcode_identity(user="ct01tech", passcode=PASSCODE, positive=False):
    return {"type": "username_passcode", "username": user, "passcode": passcode,
            "positive_response_requested": positive}


def jwt_identity(token, positive=False):
    TOKENS.append(token)
    return {"type": "jwt", "token": token, "positive_response_requested": positive}


def associate(src="ngx-client", calling="CT01", called=PACS_AET, identity="default", tls="client",
              address=GW, port=PORT, dimse="echo", expect="any", **extra):
    """One association from lab host `src`; the module's result."""
    if identity == "default":
        identity = passcode_identity()
    args = {"host": address, "port": port, "called_ae": called, "calling_ae": calling, "dimse": dimse,
            "expect": expect, "timeout": 5, **extra}
    if tls is not None:
        args["tls"] = _tls(tls)
    if identity is not None:
        args["identity"] = identity
    return host(src).ansible("dicomsec.hardening.dicom_association", json.dumps(args), check=False)


def decisions():
    text = host("ngx-gw").check_output(f"cat {LOG}")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def with_decision(call):
    """Run `call`, then wait for the decision line it caused; (result, line)."""
    before = len(decisions())
    result = call()
    for _attempt in range(50):
        new = decisions()[before:]
        if new:
            return result, new[-1]
        time.sleep(0.1)
    raise AssertionError(f"no decision line after {result}")


def reject(result):
    return {k: (result["reject"] or {}).get(k) for k in ("result", "source", "reason")}


# --- JWTs, RS256, signed with the identity provider's key (or forged) ----------------------

def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _key(name):
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key((PKI / name).read_bytes(), password=None)


def token(sub="dr.house", alg="RS256", forged=False, **claims):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    now = int(time.time())
    body = {"iss": S["jwt_issuer"], "aud": S["jwt_audience"], "sub": sub, "iat": now - 5, "nbf": now - 5,
            "exp": now + 300}
    body.update(claims)
    head = {"alg": alg, "typ": "JWT", "kid": S["jwt_kid"]}
    signing_input = f"{_b64url(json.dumps(head).encode())}.{_b64url(json.dumps(body).encode())}"
    if alg == "none":
        return signing_input + "."
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if forged else _key("idp.key")
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + _b64url(signature)


# --- The authorized user, and what the PACS holds afterwards ------------------------------

def orthanc_has_instance(uid):
    script = (
        "import base64, json, sys, urllib.request\n"
        "req = urllib.request.Request('http://127.0.0.1:8042/tools/lookup', data=sys.argv[1].encode(), method='POST')\n"
        "req.add_header('Authorization', 'Basic ' + base64.b64encode(f'{sys.argv[2]}:{sys.argv[3]}'.encode()).decode())\n"
        "print(json.dumps([m['Type'] for m in json.load(urllib.request.urlopen(req, timeout=5))]))\n"
    )
    out = host("ngx-pacs").check_output(shlex.join(["python3", "-c", script, uid, S["rest_user"], S["rest_password"]]))
    return "Instance" in json.loads(out)


def test_authorized_user_stores_through_tls_with_a_client_certificate_and_orthanc_has_the_instance():
    res, line = with_decision(lambda: associate(dimse="store", expect="accepted"))
    assert res["tls"]["version"] in ("TLSv1.2", "TLSv1.3"), res
    assert res["operation"]["name"] == "C-STORE" and res["operation"]["succeeded"], res
    assert (line["verdict"], line["reason"], line["user"], line["calling_ae"]) == ("accept", "authorized", "ct01tech", "CT01"), line
    assert line["client_cert_subject"] == "CN=ngx-client" and line["upstream"].startswith(PACS), line
    assert orthanc_has_instance(res["operation"]["sop_instance_uid"])


def test_a_user_with_a_valid_jwt_is_accepted():
    res, line = with_decision(lambda: associate(identity=jwt_identity(token()), expect="accepted"))
    assert (line["verdict"], line["user"], line["identity_type"]) == ("accept", "dr.house", "jwt"), line


def test_positive_response_is_requested_and_received():
    res = associate(identity=passcode_identity(positive=True), expect="accepted")
    assert res["identity_response"]["present"], res


# --- Refusals by the gate: each an A-ASSOCIATE-RJ and a decision line with its reason ------

REFUSALS = {
    "no identity": (dict(identity=None), IDENTITY_REJECT, "identity-required"),
    "wrong passcode": (dict(identity=passcode_identity(passcode="lab-only-not-the-passcode")), IDENTITY_REJECT, "wrong-passcode"),
    "unknown user": (dict(identity=passcode_identity(user="nobody-here")), IDENTITY_REJECT, "unknown-user"),
    "type 1 where not allowed": (dict(identity={"type": "username", "username": "ct01tech"}), IDENTITY_REJECT,
                                 "identity-type-not-allowed"),
    "expired jwt": (lambda: dict(identity=jwt_identity(token(exp=int(time.time()) - 600, iat=int(time.time()) - 900,
                                                             nbf=int(time.time()) - 900))),
                    IDENTITY_REJECT, "jwt-expired"),
    "not yet valid jwt": (lambda: dict(identity=jwt_identity(token(nbf=int(time.time()) + 600))), IDENTITY_REJECT,
                          "jwt-not-yet-valid"),
    "wrong issuer jwt": (lambda: dict(identity=jwt_identity(token(iss="https://idp.elsewhere.test/"))),
                         IDENTITY_REJECT, "jwt-wrong-issuer"),
    "wrong audience jwt": (lambda: dict(identity=jwt_identity(token(aud="another-service"))), IDENTITY_REJECT,
                           "jwt-wrong-audience"),
    "forged jwt": (lambda: dict(identity=jwt_identity(token(forged=True))), IDENTITY_REJECT, "jwt-bad-signature"),
    "alg none jwt": (lambda: dict(identity=jwt_identity(token(alg="none"))), IDENTITY_REJECT, "jwt-algorithm-refused"),
    "wrong calling AE": (dict(calling="XR99"), CALLING_REJECT, "calling-ae-not-recognized"),
    "wrong called AE": (dict(called="NOTTHEPACS"), CALLED_REJECT, "called-ae-not-recognized"),
    "user on an AE not bound to them": (dict(calling="MR02"), IDENTITY_REJECT, "user-not-allowed-on-calling-ae"),
    "bound AE from the wrong source": (dict(src="ngx-outsider"), CALLING_REJECT, "calling-ae-wrong-source"),
}


@pytest.mark.parametrize("case", list(REFUSALS), ids=[c.replace(" ", "_") for c in REFUSALS])
def test_the_gate_rejects_with_the_right_reason(case):
    kwargs, expected_reject, reason = REFUSALS[case]
    kwargs = kwargs() if callable(kwargs) else kwargs
    res, line = with_decision(lambda: associate(expect="rejected", **kwargs))
    assert reject(res) == expected_reject, res
    assert (line["verdict"], line["reason"]) == ("reject", reason), line
    assert line["reject"] == "/".join(str(expected_reject[k]) for k in ("result", "source", "reason")), line
    assert line["upstream"] == "", line


# --- Refusals at the TLS layer and of what is not DICOM -----------------------------------

# nginx finishes the handshake and then closes a connection whose certificate did not
# verify, so the client sees the TLS session closed before any DICOM answer.
def test_tls_without_a_client_certificate_is_refused():
    res, line = with_decision(lambda: associate(tls="none", expect="denied"))
    assert res["outcome"] in ("aborted", "tls_failed") and res["reject"] is None, res
    assert (line["verdict"], line["client_cert_verify"], line["calling_ae"]) == ("close", "NONE", ""), line


def test_tls_with_an_untrusted_client_certificate_is_refused():
    res, line = with_decision(lambda: associate(tls="rogue", expect="denied"))
    assert res["outcome"] in ("aborted", "tls_failed") and res["reject"] is None, res
    assert line["verdict"] == "close" and line["client_cert_verify"].startswith("FAILED"), line
    assert line["client_cert_subject"] == "CN=ngx-client" and line["calling_ae"] == "", line


def test_plaintext_dicom_to_the_tls_port_is_refused():
    res = associate(tls=None, expect="denied")
    assert res["reject"] is None and res["operation"] is None, res


def _s_client(*options):
    cmd = ["openssl", "s_client", "-connect", f"{GW}:{PORT}", "-CAfile", f"{CERTS}/lab-ca.crt",
           "-cert", f"{CERTS}/client.crt", "-key", f"{CERTS}/client.key", *options]
    return host("ngx-client").run(shlex.join(cmd) + " </dev/null 2>&1")


def test_tls_1_1_is_refused_by_the_gateway_and_tls_1_2_is_not():
    # SECLEVEL=0 lets this client offer TLS 1.1 at all: the refusal is the gateway's.
    old = _s_client("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert old.rc != 0 and "alert protocol version" in old.stdout, old.stdout
    new = _s_client("-tls1_2", "-brief")
    assert "Protocol version: TLSv1.2" in new.stdout, new.stdout


def test_http_inside_tls_on_the_dicom_port_is_closed_without_an_answer():
    script = (
        "import socket, ssl, sys\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[3] + '/lab-ca.crt')\n"
        "ctx.load_cert_chain(sys.argv[3] + '/client.crt', sys.argv[3] + '/client.key')\n"
        "ctx.check_hostname = False\n"
        "with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as raw:\n"
        "    with ctx.wrap_socket(raw) as s:\n"
        "        s.sendall(b'GET / HTTP/1.1\\r\\nHost: gateway\\r\\n\\r\\n')\n"
        "        try:\n"
        "            print(repr(s.recv(100)))\n"
        "        except (ConnectionError, ssl.SSLError) as exc:\n"
        "            print('closed', type(exc).__name__)\n"
    )
    before = len(decisions())
    out = host("ngx-client").check_output(shlex.join(["python3", "-c", script, GW, str(PORT), CERTS]))
    assert out in ("b''",) or out.startswith("closed"), out
    time.sleep(0.5)
    assert [d["reason"] for d in decisions()[before:]] == ["not-dicom"]


def test_plaintext_http_on_the_dicom_port_gets_no_http_answer():
    script = (
        "import socket, sys\n"
        "with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:\n"
        "    s.sendall(b'GET / HTTP/1.1\\r\\nHost: gateway\\r\\n\\r\\n')\n"
        "    try:\n"
        "        print(repr(s.recv(100)))\n"
        "    except ConnectionError as exc:\n"
        "        print('closed', type(exc).__name__)\n"
    )
    out = host("ngx-client").check_output(shlex.join(["python3", "-c", script, GW, str(PORT)]))
    assert "HTTP/" not in out, out


# --- The PACS behind the gateway ------------------------------------------------------------

def test_a_direct_association_to_the_pacs_around_the_gateway_is_refused():
    res = associate(address=PACS, port=S["pacs_port"], tls=None, identity=None, expect="denied")
    assert res["outcome"] in ("refused", "aborted", "timeout"), res


# --- DCMTK's storescu: -usr/-pwd, --jwt, -rsp -----------------------------------------------

def storescu(src="ngx-client", *identity):
    cmd = ["/usr/bin/storescu", "+tls", f"{CERTS}/client.key", f"{CERTS}/client.crt", "+cf", f"{CERTS}/lab-ca.crt",
           "-aet", "CT01", "-aec", PACS_AET, *identity, GW, str(PORT), f"{CERTS}/dcmtk-probe.dcm"]
    return host(src).run(shlex.join(cmd) + " 2>&1")


def test_dcmtk_storescu_with_username_and_passcode_and_positive_response_stores():
    out = storescu("ngx-client", "-usr", "ct01tech", "-pwd", PASSCODE, "-rsp")
    assert out.rc == 0, out.stdout
    assert "Positive response requested but none received" not in out.stdout, out.stdout


def test_dcmtk_storescu_with_a_wrong_passcode_is_rejected():
    out = storescu("ngx-client", "-usr", "ct01tech", "-pwd", "lab-only-not-the-passcode", "-rsp")
    assert out.rc != 0 and "Association Rejected" in out.stdout, out.stdout


def _token_file(name, value):
    # storescu --jwt reads the token from a file.
    path = f"{CERTS}/{name}.jwt"
    host("ngx-client").run(f"umask 077 && printf %s {shlex.quote(value)} > {path}")
    return path


def test_dcmtk_storescu_with_a_jwt_stores_and_with_a_forged_one_is_rejected():
    good, forged = token(), token(forged=True)
    TOKENS.extend([good, forged])
    ok = storescu("ngx-client", "--jwt", _token_file("good", good), "-rsp")
    assert ok.rc == 0, ok.stdout
    bad = storescu("ngx-client", "--jwt", _token_file("forged", forged))
    assert bad.rc != 0 and "Association Rejected" in bad.stdout, bad.stdout


# --- fail2ban: the guessing source is banned, the legitimate user is not ------------------

def banned():
    out = host("ngx-gw").check_output(f"fail2ban-client status {JAIL} 2>/dev/null")
    lines = [line for line in out.splitlines() if "Banned IP list:" in line]
    return lines[0].split("Banned IP list:")[1].split() if lines else []


@pytest.fixture
def unban_outsider():
    yield
    host("ngx-gw").run(f"fail2ban-client set {JAIL} unbanip {S['outsider_address']}")


GUESSER = """
import json, ssl, sys
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import Verification
address, port, called, calling, user, count, certs = sys.argv[1:]
ctx = ssl.create_default_context(cafile=certs + "/lab-ca.crt")
ctx.load_cert_chain(certs + "/client.crt", certs + "/client.key")
ctx.check_hostname = False
outcomes = []
for attempt in range(int(count)):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.primary_field = user.encode()
    identity.secondary_field = ("lab-only-guess-%d" % attempt).encode()
    assoc = ae.associate(address, int(port), ae_title=called, ext_neg=[identity], tls_args=(ctx, None))
    outcomes.append("rejected" if assoc.is_rejected else "accepted" if assoc.is_established else "other")
    if assoc.is_established:
        assoc.release()
print(json.dumps(outcomes))
"""


def test_a_passcode_guessing_source_is_banned_and_the_legitimate_user_still_gets_in(unban_outsider):
    guesser = "ngx-outsider"
    assert S["outsider_address"] not in banned()
    # The outsider's own modality and the right passcode work before the ban: the ban is what stops it.
    associate(src=guesser, calling="WS01", expect="accepted")
    # One process guesses quickly, as a tool would.
    out = host(guesser).check_output(shlex.join(["python3", "-c", GUESSER, GW, str(PORT), PACS_AET, "WS01", "ct01tech",
                                                 str(S["fail2ban_maxretry"]), CERTS]))
    assert json.loads(out) == ["rejected"] * S["fail2ban_maxretry"], out
    for _attempt in range(100):
        if S["outsider_address"] in banned():
            break
        time.sleep(0.1)
    assert S["outsider_address"] in banned()
    nft = host("ngx-gw").check_output("nft list table inet f2b-table")
    assert S["outsider_address"] in nft, nft
    # Banned: even the right passcode no longer reaches the gate.
    res = associate(src=guesser, calling="WS01", expect="denied")
    assert res["outcome"] in ("refused", "tls_failed", "aborted", "timeout"), res
    associate(src="ngx-client", expect="accepted")


# --- Capacity ---------------------------------------------------------------------------------

def test_the_running_workers_have_the_roles_connection_and_file_limits():
    """Debian's nginx.conf says 768, which drops associations under load; the role raised it,
    and each worker raised its descriptor limit above systemd's 1,024."""
    gw = host("ngx-gw")
    config = gw.check_output("nginx -T 2>/dev/null")
    assert "\tworker_connections 4096;" in config
    assert "worker_connections 768" not in config
    assert "worker_rlimit_nofile 8192;" in config
    workers = gw.check_output("pgrep -f '^nginx: worker process'").split()
    assert workers
    for pid in workers:
        limits = gw.check_output(f"cat /proc/{pid}/limits")
        assert any(line.startswith("Max open files") and line.split()[3] == "8192" for line in limits.splitlines())


# --- No secret in any log --------------------------------------------------------------------

def test_no_log_holds_a_passcode_a_hash_or_a_token():
    gw = host("ngx-gw")
    policy = gw.check_output("cat /etc/nginx/dicom-gate/dicom_gate_policy.js")
    hashes = [part.split('"')[0] for part in policy.split('"hash": "')[1:]]
    assert hashes, "the policy holds no hash to look for"
    secrets = [u["passcode"] for u in S["users"] if "passcode" in u] + hashes + TOKENS
    assert TOKENS, "no token was sent"
    logs = {
        "decision log": gw.check_output(f"cat {LOG}"),
        "journal": gw.check_output("journalctl -t dicom_gate --no-pager -o cat"),
        "nginx error log": gw.check_output("cat /var/log/nginx/error.log"),
        "fail2ban log": gw.check_output("cat /var/log/fail2ban.log || true"),
    }
    assert '"verdict":"reject"' in logs["journal"], "the journal has no decision lines"
    for name, text in logs.items():
        for secret in secrets:
            assert secret not in text, f"a secret is in the {name}"
            # The hash's key part alone, too.
            assert secret.split("$")[-1] not in text, f"part of a secret is in the {name}"


def test_a_verbose_check_run_of_the_role_prints_no_passcode_and_no_hash():
    """The role applied again, in check mode with -vvv, as an operator debugging it would."""
    import subprocess
    import sys

    policy = host("ngx-gw").check_output("cat /etc/nginx/dicom-gate/dicom_gate_policy.js")
    hashes = [part.split('"')[0] for part in policy.split('"hash": "')[1:]]
    passcodes = [u["passcode"] for u in S["users"] if "passcode" in u]
    playbook = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "verbose-check.yml"
    playbook.write_text("- name: Apply the gateway role in check mode\n"
                        "  hosts: dicom_gateways\n"
                        "  roles:\n"
                        "    - role: dicomsec.hardening.nginx_stream_proxy\n")
    run = subprocess.run([str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "-i", INVENTORY, "--check",
                          "--diff", "-vvv", str(playbook)], capture_output=True, text=True, check=False)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "ngx-gw" in out and "changed=0" in out, out[-3000:]
    for secret in passcodes + hashes:
        assert secret not in out and secret.split("$")[-1] not in out
