# -*- coding: utf-8 -*-
"""A loopback lab for nginx_stream_proxy's association gate.

- ``render_gateway``: the role's own templates and gate, rendered by ansible with the role's
  defaults into a temporary nginx prefix;
- ``Nginx``: Debian's nginx on that prefix (``nginx -p DIR -c conf -g 'daemon off;'``), stopped
  by its handle, its pid file in the prefix;
- ``GatePki``: a CA with a server certificate and two trusted client certificates of different
  subjects, and one client certificate from a CA nobody trusts;
- ``RecordingScp``: a pynetdicom SCP (echo, store) that keeps what every association carried;
- ``jwt_token``: JSON Web Tokens signed (or forged) the ways the tests need;
- ``SyslogSink``: a unix datagram socket that stands in for /dev/log.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from collections_path import collections_path
from lab_servers import LOOPBACK, Unavailable, ansible_bin, free_port, stop_process, wait_port

REPO = Path(__file__).resolve().parents[4]
ROLE = REPO / "roles" / "nginx_stream_proxy"
NGINX = "/usr/sbin/nginx"
MODULES = "/usr/lib/nginx/modules"
# All synthetic. Each is grepped for in every log the gateway writes.
PASSCODES = {"ct01tech": "Gate-Passcode-ct01-7Qz", "mr02tech": "Gate-Passcode-mr02-4Lp"}
CALLED_AE = "PACS01"


def nginx_missing():
    missing = [p for p in (NGINX, MODULES + "/ngx_stream_module.so", MODULES + "/ngx_stream_js_module.so")
               if not os.path.exists(p)]
    return missing


def skip_without_nginx():
    """Skip the calling test unless Debian's nginx and its stream modules are installed."""
    import pytest

    missing = nginx_missing()
    if missing:
        pytest.skip("needs Debian's nginx, libnginx-mod-stream and libnginx-mod-stream-js: missing " + ", ".join(missing))


# ---------------------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------------------


class GatePki:
    def __init__(self, root):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.root = Path(root)
        now = datetime.datetime.now(datetime.timezone.utc)

        def name(cn):
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def write(stem, cert, key=None):
            (self.root / (stem + ".pem")).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            if key is not None:
                path = self.root / (stem + ".key")
                path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
                path.chmod(0o600)

        def issue(cn, issuer_key, issuer_name, ca=False, server=False):
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer_name)
                       .public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - datetime.timedelta(days=1))
                       .not_valid_after(now + datetime.timedelta(days=30)))
            if ca:
                builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            if server:
                builder = builder.add_extension(x509.SubjectAlternativeName([
                    x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
            return key, builder.sign(issuer_key or key, hashes.SHA256())

        ca_key, ca = issue("dicom gate test CA", None, name("dicom gate test CA"), ca=True)
        write("ca", ca)
        other_key, other = issue("untrusted test CA", None, name("untrusted test CA"), ca=True)
        issued = {}
        for stem, cn, key_of, issuer in (("server", "localhost", ca_key, ca), ("ct01", "CT01", ca_key, ca),
                                         ("mr02", "MR02", ca_key, ca), ("intruder", "CT01", other_key, other),
                                         ("revoked", "CT01", ca_key, ca)):
            key, cert = issue(cn, key_of, issuer.subject, server=stem == "server")
            write(stem, cert, key)
            issued[stem] = cert
        # The CA's revocation list: CT01's second certificate is withdrawn, its first is not.
        revoked = (x509.RevokedCertificateBuilder().serial_number(issued["revoked"].serial_number)
                   .revocation_date(now - datetime.timedelta(hours=1)).build())
        crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
               .last_update(now - datetime.timedelta(hours=1)).next_update(now + datetime.timedelta(days=7))
               .add_revoked_certificate(revoked).sign(ca_key, hashes.SHA256()))
        (self.root / "ca.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))

    def path(self, name):
        return str(self.root / name)

    def client_tls(self, stem="ct01", **extra):
        tls = {"enabled": True, "ca_file": self.path("ca.pem"), "server_name": "localhost"}
        if stem:
            tls.update(cert_file=self.path(stem + ".pem"), key_file=self.path(stem + ".key"))
        tls.update(extra)
        return tls

    def server_context(self, require_client_cert=False):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.path("server.pem"), self.path("server.key"))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.path("ca.pem"))
        return context


# ---------------------------------------------------------------------------------------
# JSON Web Tokens
# ---------------------------------------------------------------------------------------


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Idp:
    """The hospital's identity provider: an RSA key published as JWKS and an EC key as PEM."""

    ISSUER = "https://idp.hospital.test/realms/imaging"
    AUDIENCE = "dicom-gateway"

    def __init__(self):
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self):
        numbers = self.rsa.public_key().public_numbers()

        def b64int(value):
            return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))

        return {"keys": [{"kty": "RSA", "kid": "idp-rsa", "use": "sig", "alg": "RS256",
                          "n": b64int(numbers.n), "e": b64int(numbers.e)}]}

    def ec_pem(self):
        from cryptography.hazmat.primitives import serialization

        return self.ec.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def rsa_pem(self):
        from cryptography.hazmat.primitives import serialization

        return self.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def token(self, sub="dr.house", alg="RS256", kid=None, key=None, header=None, **claims):
        """A token; ``claims`` override the defaults (a value of None removes the claim)."""
        import hashlib
        import hmac

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

        now = int(time.time())
        body = {"iss": self.ISSUER, "aud": self.AUDIENCE, "sub": sub, "iat": now, "nbf": now - 5, "exp": now + 300}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        head = {"alg": alg, "typ": "JWT"}
        if kid is None:
            kid = {"RS256": "idp-rsa", "ES256": "idp-ec"}.get(alg)
        if kid:
            head["kid"] = kid
        head.update(header or {})
        signing_input = ("%s.%s" % (_b64url(json.dumps(head).encode()), _b64url(json.dumps(body).encode()))).encode()
        if alg == "none":
            signature = b""
        elif alg == "HS256":
            # The algorithm-confusion attack: the public key's PEM used as an HMAC secret.
            signature = hmac.new(key or self.rsa_pem().encode(), signing_input, hashlib.sha256).digest()
        elif alg == "RS256":
            signature = (key or self.rsa).sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "ES256":
            r, s = utils.decode_dss_signature((key or self.ec).sign(signing_input, ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            raise ValueError(alg)
        return signing_input.decode() + "." + _b64url(signature)


# ---------------------------------------------------------------------------------------
# Upstream SCP that records what reached it
# ---------------------------------------------------------------------------------------


class RecordingScp:
    """A pynetdicom SCP for Verification and every storage class that keeps, per
    association, the calling AE, the user identity it received and the raw bytes."""

    def __init__(self, ae_title="PACS01", ssl_context=None, check_identity=None):
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        self.associations = []
        self.raw = bytearray()
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.maximum_associations = 64
        ae.network_timeout = 10
        ae.acse_timeout = 10
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax)
        handlers = [(evt.EVT_REQUESTED, self._requested), (evt.EVT_DATA_RECV, self._data),
                    (evt.EVT_C_STORE, lambda event: 0x0000), (evt.EVT_C_ECHO, lambda event: 0x0000)]
        if check_identity is not None:
            handlers.append((evt.EVT_USER_ID, check_identity))
        self.server = ae.start_server((LOOPBACK, 0), block=False, evt_handlers=handlers, ssl_context=ssl_context)
        self.port = self.server.server_address[1]

    def _requested(self, event):
        primitive = event.assoc.requestor
        with self._lock:
            self.associations.append({
                "calling_ae": str(primitive.primitive.calling_ae_title).strip(),
                "user_identity": primitive.user_identity,
                "contexts": len(primitive.requested_contexts),
            })

    def _data(self, event):
        with self._lock:
            self.raw.extend(event.data)

    def clear(self):
        with self._lock:
            self.associations.clear()
            self.raw.clear()

    def stop(self):
        self.server.shutdown()


# ---------------------------------------------------------------------------------------
# Rendering the role and running nginx
# ---------------------------------------------------------------------------------------


def _playbook(out):
    return [{
        "name": "Render nginx_stream_proxy's gate and stream configuration for loopback",
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [
            {"name": "Load the role's defaults, as the role's entry point does",
             "ansible.builtin.include_vars": str(ROLE / "defaults" / "main.yml")},
            {"name": "Load the lab's values over them",
             "ansible.builtin.include_vars": str(out / "render" / "vars.json")},
            {"name": "Install the gate",
             "ansible.builtin.copy": {"src": str(ROLE / "files" / "dicom_gate.js"),
                                      "dest": str(out / "gate" / "dicom_gate.js"), "mode": "0644"}},
            {"name": "Render the gate's policy, hashes and keys only",
             "ansible.builtin.template": {"src": str(ROLE / "templates" / "dicom_gate_policy.js.j2"),
                                          "dest": str(out / "gate" / "dicom_gate_policy.js"), "mode": "0600"},
             "no_log": True},
            {"name": "Render the stream configuration",
             "ansible.builtin.template": {"src": str(ROLE / "templates" / "nginx-stream.conf.j2"),
                                          "dest": str(out / "stream.conf"), "mode": "0644"}},
            {"name": "Raise worker_connections in the main configuration with the role's own task",
             "ansible.builtin.import_tasks": str(ROLE / "tasks" / "worker_limits.yml"),
             "vars": {"nginx_stream_proxy__nginx_conf": str(out / "nginx.conf"),
                      "nginx_stream_proxy__binary": NGINX,
                      "nginx_stream_proxy__nginx_absent": False}},
        ],
        "handlers": [
            {"name": "Reload nginx", "ansible.builtin.meta": "noop"},
        ],
    }]


def loopback_listener(name, port, upstream_port, **extra):
    """A listener of nginx_stream_proxy_listeners on loopback, with short timeouts for tests."""
    listener = {"name": name, "port": port, "addresses": ["127.0.0.1"], "called_aes": [CALLED_AE],
                "upstream": {"host": "127.0.0.1", "port": upstream_port},
                "timeouts": {"preread": 3, "connect": 3, "idle": 30}, "max_connections_per_source": 64}
    listener.update(extra)
    return listener


def render_gateway(root, role_vars):
    """Render the role's gate, policy and stream.conf into ``root`` (gate/, stream.conf), and
    a main nginx.conf whose events {} starts as Debian ships it and is then raised by the
    role's own task, so the limits under test are the ones the role sets."""
    root = Path(root)
    for sub in ("gate", "render", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    write_main_conf(root)
    playbook = root / "render" / "playbook.json"
    playbook.write_text(json.dumps(_playbook(root)))
    # The variables hold passcodes: a file only we can read, removed after the run.
    extra = root / "render" / "vars.json"
    fd = os.open(extra, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(role_vars, handle)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path(), ANSIBLE_STDOUT_CALLBACK="json",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="0", ANSIBLE_LOCALHOST_WARNING="0",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0")
    cmd = [ansible_bin("ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)]
    try:
        proc = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=180, check=False)
    finally:
        extra.unlink()
    if proc.returncode != 0:
        raise RuntimeError("nginx_stream_proxy did not render: %s" % (proc.stdout + proc.stderr)[-3000:])
    return root / "stream.conf"


MAIN_CONF = """\
load_module {modules}/ngx_stream_module.so;
load_module {modules}/ngx_stream_js_module.so;
worker_processes 2;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{
\tworker_connections 768;
}}
include {root}/stream.conf;
"""


def write_main_conf(root):
    """nginx.conf for a prefix of its own: the stream modules, events {} as Debian ships it,
    and ``root``/stream.conf at the main level."""
    (Path(root) / "nginx.conf").write_text(MAIN_CONF.format(modules=MODULES, root=root))


class Nginx:
    """nginx on a prefix of its own, in the foreground, stopped by its handle, with the
    nginx.conf and stream.conf that render_gateway wrote there."""

    def __init__(self, root):
        self.root = Path(root)
        self.conf = self.root / "nginx.conf"
        self.proc = None
        self.log = None

    def test_config(self):
        return subprocess.run([NGINX, "-t", "-q", "-p", str(self.root), "-c", str(self.conf)],
                              capture_output=True, text=True, check=False)

    def start(self, ports):
        check = self.test_config()
        if check.returncode != 0:
            raise RuntimeError("nginx -t refused the rendered configuration: %s" % check.stderr)
        self.log = open(self.root / "nginx.stderr", "wb")
        self.proc = subprocess.Popen([NGINX, "-p", str(self.root), "-c", str(self.conf), "-g", "daemon off;"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            for port in ports:
                wait_port(port, proc=self.proc)
        except RuntimeError:
            self.stop()
            raise
        return self

    def error_log(self):
        path = self.root / "error.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def worker_pids(self):
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True,
                             check=False).stdout
        return sorted(int(p) for p in out.split())

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
        if self.log is not None:
            self.log.close()


def make_root():
    """A prefix the workers (nobody when nginx starts as root) can traverse to the sockets."""
    root = Path(tempfile.mkdtemp(prefix="dicom-gate-"))
    root.chmod(0o755)
    return root


class SyslogSink:
    """A unix datagram socket in place of /dev/log: what nginx sends to the journal."""

    def __init__(self, path):
        self.path = str(path)
        self.messages = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self.sock.settimeout(0.2)
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                self.messages.append(self.sock.recv(65536).decode("utf-8", "replace"))
            except socket.timeout:
                continue
            except OSError:
                return

    def stop(self):
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def read_decisions(path):
    lines = Path(path).read_text(encoding="utf-8").splitlines() if Path(path).exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


__all__ = ["CALLED_AE", "PASSCODES", "GatePki", "Idp", "Nginx", "RecordingScp", "SyslogSink", "Unavailable", "free_port", "make_root",
           "loopback_listener", "nginx_missing", "read_decisions", "render_gateway", "skip_without_nginx", "write_main_conf", "shutil", "wait_for"]
