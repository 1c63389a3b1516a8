# -*- coding: utf-8 -*-
"""A loopback lab for atna_audit: the role's rsyslog configuration as the gateway's sender, a
second rsyslogd as the audit record repository, and a PKI made for the run.

- ``AtnaPki``: a CA with the collector's and the gateway's certificates, and a second CA with a
  gateway certificate of the same name that the collector does not trust;
- ``render_sender``: the role's template, rendered by ansible with the role's defaults, and a
  main configuration that includes it (the role's file is a snippet of /etc/rsyslog.d);
- ``Rsyslogd``: rsyslogd in the foreground on a configuration of its own (``-n -f``, its own
  pid file and work directory), stopped by its handle;
- ``Collector``: an rsyslogd with imtcp over mutual TLS that writes every message it receives
  as one JSON line, and ``audit_message`` to read the XML out of one.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from collections_path import collections_path
from lab_servers import LOOPBACK, ansible_bin, free_port, wait_port

REPO = Path(__file__).resolve().parents[4]
ROLE = REPO / "roles" / "atna_audit"
RSYSLOGD = "/usr/sbin/rsyslogd"
COLLECTOR_NAME = "arr.hospital.test"
GATEWAY_NAME = "gateway.hospital.test"
BOM = "\ufeff"


def rsyslog_missing():
    missing = [p for p in (RSYSLOGD,) if not os.path.exists(p)]
    drivers = list(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so")) + list(Path("/usr/lib/rsyslog").glob("lmnsd_gtls.so"))
    if not drivers:
        missing.append("rsyslog-gnutls (lmnsd_gtls.so)")
    return missing


class AtnaPki:
    def __init__(self, root):
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)

        def name(cn):
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def issue(stem, cn, issuer=None, ca=False, sans=()):
            key = ec.generate_private_key(ec.SECP256R1())
            issuer_key, issuer_cert = issuer if issuer else (key, None)
            builder = (x509.CertificateBuilder().subject_name(name(cn))
                       .issuer_name(issuer_cert.subject if issuer_cert else name(cn))
                       .public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - datetime.timedelta(days=1))
                       .not_valid_after(now + datetime.timedelta(days=30)))
            if ca:
                builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            if sans:
                builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
            cert = builder.sign(issuer_key, hashes.SHA256())
            (self.root / (stem + ".pem")).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            key_path = self.root / (stem + ".key")
            key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
            key_path.chmod(0o600)
            return key, cert

        ca = issue("ca", "audit test CA", ca=True)
        other = issue("other-ca", "untrusted test CA", ca=True)
        issue("collector", COLLECTOR_NAME, ca, sans=[x509.DNSName(COLLECTOR_NAME),
                                                     x509.IPAddress(ipaddress.ip_address(LOOPBACK))])
        issue("gateway", GATEWAY_NAME, ca, sans=[x509.DNSName(GATEWAY_NAME)])
        # The same name from a CA the collector does not trust: only the signature differs.
        issue("forged-gateway", GATEWAY_NAME, other, sans=[x509.DNSName(GATEWAY_NAME)])
        # The collector's twin signed by the other CA, for a collector that trusts only it.
        issue("other-collector", COLLECTOR_NAME, other, sans=[x509.DNSName(COLLECTOR_NAME)])

    def path(self, name):
        return str(self.root / name)


# ---------------------------------------------------------------------------------------
# rsyslogd
# ---------------------------------------------------------------------------------------


class Rsyslogd:
    """rsyslogd -n on ``conf``, with a pid file in ``root``; stopped by its handle."""

    def __init__(self, root, conf):
        self.root = Path(root)
        self.conf = Path(conf)
        self.pid_file = self.root / "rsyslogd.pid"
        self.proc = None
        self.out = self.root / "rsyslogd.out"

    def check(self):
        return subprocess.run([RSYSLOGD, "-N1", "-f", str(self.conf)], capture_output=True, text=True, check=False)

    def start(self, port=None, env=None):
        """Start rsyslogd; ``env``: more environment (its debug log, for one)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pid_file)],
                                         stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
        if port:
            wait_port(port, proc=self.proc)
        else:
            time.sleep(0.5)
            if self.proc.poll() is not None:
                raise RuntimeError("rsyslogd exited: " + self.out.read_text(errors="replace")[-2000:])
        return self

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            # A clean shutdown saves the queue to disk and the imfile state: wait for it.
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def output(self):
        return self.out.read_text(errors="replace") if self.out.exists() else ""


COLLECTOR_CONF = """\
global(workDirectory="{root}/work")
module(load="imtcp" maxSessions="20")
template(name="received" type="list") {{
    constant(value="{{")
    property(outname="pri" name="pri" format="jsonf") constant(value=",")
    property(outname="hostname" name="hostname" format="jsonf") constant(value=",")
    property(outname="app_name" name="app-name" format="jsonf") constant(value=",")
    property(outname="procid" name="procid" format="jsonf") constant(value=",")
    property(outname="msgid" name="msgid" format="jsonf") constant(value=",")
    property(outname="version" name="protocol-version" format="jsonf") constant(value=",")
    property(outname="peer" name="fromhost-ip" format="jsonf") constant(value=",")
    property(outname="msg" name="msg" format="jsonf")
    constant(value="}}\\n")
}}
ruleset(name="received") {{
    action(type="omfile" file="{root}/received.jsonl" template="received")
}}
input(type="imtcp" address="{address}" port="{port}" ruleset="received"
    streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/name"
    permittedPeer=["{peer}"]{priorities}
    streamDriver.caFile="{ca}" streamDriver.certFile="{cert}" streamDriver.keyFile="{key}")
"""


class Collector:
    """The audit record repository: rsyslogd's imtcp with mutual TLS (its client must show a
    certificate from ``ca`` for ``peer``), writing what it receives to received.jsonl.
    ``priorities``: a GnuTLS priority string for the listener (its TLS versions), or its default."""

    def __init__(self, root, pki, ca="ca.pem", cert="collector", peer=GATEWAY_NAME, port=None, priorities=None):
        self.root = Path(root)
        (self.root / "work").mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.received_file = self.root / "received.jsonl"
        conf = self.root / "collector.conf"
        priorities = '\n    gnutlsPriorityString="%s"' % priorities if priorities else ""
        conf.write_text(COLLECTOR_CONF.format(root=self.root, address=LOOPBACK, port=self.port, peer=peer, priorities=priorities,
                                              ca=pki.path(ca), cert=pki.path(cert + ".pem"),
                                              key=pki.path(cert + ".key")))
        self.daemon = Rsyslogd(self.root, conf)

    def start(self):
        self.daemon.start(self.port)
        return self

    def stop(self):
        self.daemon.stop()

    def received(self):
        if not self.received_file.exists():
            return []
        return [json.loads(line) for line in self.received_file.read_text(encoding="utf-8").splitlines() if line]

    def messages(self):
        return [audit_message(record) for record in self.received()]


def audit_message(record):
    """The AuditMessage element of one received syslog message."""
    msg = record["msg"]
    assert msg.startswith(BOM + "<?xml"), msg[:80]
    return ET.fromstring(msg[len(BOM):].encode("utf-8"))


def summary(message):
    """The fields a test compares, out of one AuditMessage."""
    event = message.find("EventIdentification")
    participants = message.findall("ActiveParticipant")
    source = message.find("AuditSourceIdentification")
    type_code = event.find("EventTypeCode")
    return {
        "event_id": event.find("EventID").get("csd-code"),
        "event_id_system": event.find("EventID").get("codeSystemName"),
        "event_id_text": event.find("EventID").get("originalText"),
        "type_code": type_code.get("csd-code") if type_code is not None else None,
        "type_text": type_code.get("originalText") if type_code is not None else None,
        "action": event.get("EventActionCode"),
        "outcome": event.get("EventOutcomeIndicator"),
        "time": event.get("EventDateTime"),
        "description": event.findtext("EventOutcomeDescription"),
        "requestor": [dict(p.attrib) for p in participants if p.get("UserIsRequestor") == "true"],
        "others": [dict(p.attrib) for p in participants if p.get("UserIsRequestor") == "false"],
        "source_id": source.get("AuditSourceID"),
        "site_id": source.get("AuditEnterpriseSiteID"),
        "source_type": source.find("AuditSourceTypeCode").get("csd-code"),
    }


# ---------------------------------------------------------------------------------------
# The role's sender configuration
# ---------------------------------------------------------------------------------------


def _render_playbook(out):
    return [{
        "name": "Render atna_audit's rsyslog configuration for loopback",
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [
            {"name": "Load the role's defaults, as the role's entry point does",
             "ansible.builtin.include_vars": str(ROLE / "defaults" / "main.yml")},
            {"name": "Load the role's own values",
             "ansible.builtin.include_vars": str(ROLE / "vars" / "main.yml")},
            {"name": "Load Debian's names",
             "ansible.builtin.include_vars": str(ROLE / "vars" / "Debian.yml")},
            {"name": "Load the lab's values over them",
             "ansible.builtin.include_vars": str(out / "vars.json")},
            {"name": "Render the audit configuration",
             "ansible.builtin.template": {"src": str(ROLE / "templates" / "atna-audit.conf.j2"),
                                          "dest": str(out / "atna-audit.conf"), "mode": "0644"}},
            {"name": "Render the checker the role runs before it replaces the configuration",
             "ansible.builtin.template": {"src": str(ROLE / "templates" / "atna-audit-check.sh.j2"),
                                          "dest": str(out / "atna-audit-check.sh"), "mode": "0755"}},
        ],
    }]


def render_sender(root, role_vars):
    """Render the role's configuration into ``root``/atna-audit.conf, its checker into
    ``root``/atna-audit-check.sh, and a main configuration (``root``/rsyslog.conf) whose work
    directory (state files) is ``root``/work."""
    root = Path(root)
    (root / "work").mkdir(parents=True, exist_ok=True)
    (root / "vars.json").write_text(json.dumps(role_vars))
    (root / "playbook.json").write_text(json.dumps(_render_playbook(root)))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path(), ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="0")
    cmd = [ansible_bin("ansible-playbook"), "-i", "localhost,", "-c", "local", str(root / "playbook.json")]
    proc = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=180, check=False)
    if proc.returncode != 0:
        raise RuntimeError("atna_audit did not render: %s" % (proc.stdout + proc.stderr)[-3000:])
    (root / "rsyslog.conf").write_text('global(workDirectory="%s")\ninclude(file="%s")\n'
                                       % (root / "work", root / "atna-audit.conf"))
    return root / "rsyslog.conf"


def sender_vars(root, pki, collector, decision_log, **extra):
    role_vars = {
        "atna_audit_repository": {"host": LOOPBACK, "port": collector.port, "ca": pki.path("ca.pem"),
                                  "certificate": pki.path("gateway.pem"), "key": pki.path("gateway.key"),
                                  "permitted_peers": [COLLECTOR_NAME]},
        "atna_audit_source_id": "DICOM-GW-LAB",
        "atna_audit_enterprise_site_id": "Radiology Lab & Co",
        "atna_audit_syslog_hostname": GATEWAY_NAME,
        "atna_audit_decision_log": str(decision_log),
        "atna_audit_queue_directory": str(Path(root) / "work"),
        "atna_audit_resume_interval": 1,
    }
    role_vars.update(extra)
    return role_vars


class Sender:
    """The role's configuration, rendered and run by rsyslogd: the gateway's side."""

    def __init__(self, root, role_vars):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.conf = render_sender(self.root, role_vars)
        self.daemon = Rsyslogd(self.root, self.conf)

    def start(self, env=None):
        self.daemon.start(env=env)
        return self

    def stop(self):
        self.daemon.stop()


def wait_for(predicate, timeout=10.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def remove(path):
    shutil.rmtree(path, ignore_errors=True)
