"""pacs_identity's dcm4chee backend against a real slapd.

Starts Debian's slapd on a free loopback port, in a temporary directory, with
the part of dcm4chee-arc-light's schema the role touches, loads a device with
two network AEs, applies the role through ansible-playbook against localhost,
and reads the result back with ldapsearch. slapd is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lab_servers import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
SCHEMA = HERE / "dcm4chee-test-schema.ldif"
SUFFIX = "dc=dcm4che,dc=org"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PW = "lab-only-slapd-Rk4pZ8wQ"
DEVICE_DN = f"dicomDeviceName=dcm4chee-arc,cn=Devices,cn=DICOM Configuration,{SUFFIX}"
AE_DN = f"dicomAETitle=DCM4CHEE,{DEVICE_DN}"
OTHER_AE_DN = f"dicomAETitle=WORKLIST,{DEVICE_DN}"
# An AE title with characters a DN must escape (RFC 4514).
ESCAPED_AE_DN = f"dicomAETitle=DCM\\+TLS\\,1,{DEVICE_DN}"
SYSTEM_PYTHON = "/usr/bin/python3"
SLAPD = "/usr/sbin/slapd"
ATTRS = [
    "dcmUserIdentityNegotiation",
    "dcmUserIdentityNegotiationRole",
    "dcmUserIdentityNegotiationKeycloakClientID",
    "dcmValidateCallingAEHostname",
]


def _missing_tools():
    missing = [p for p in (SLAPD, shutil.which("slapadd") or "slapadd", shutil.which("ldapsearch") or "ldapsearch")
               if not os.path.exists(p)]
    if subprocess.run([SYSTEM_PYTHON, "-c", "import ldap"], capture_output=True, check=False).returncode != 0:
        missing.append("python3-ldap")
    return missing


pytestmark = pytest.mark.skipif(
    bool(_missing_tools()),
    reason="needs Debian's slapd, ldap-utils and python3-ldap: " + ", ".join(_missing_tools()),
)


CONFIG_LDIF = """\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {tmp}/slapd.pid

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif
include: file://{schema}

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcDbDirectory: {tmp}/data
olcSuffix: {suffix}
olcRootDN: {admin}
olcRootPW: {password}
olcAccess: to * by anonymous auth by * none
"""

DATA_LDIF = """\
dn: {suffix}
objectClass: dcObject
objectClass: organization
dc: dcm4che
o: dcm4che.org

dn: cn=DICOM Configuration,{suffix}
objectClass: dicomConfigurationRoot
cn: DICOM Configuration

dn: cn=Devices,cn=DICOM Configuration,{suffix}
objectClass: dicomDevicesRoot
cn: Devices

dn: {device}
objectClass: dicomDevice
objectClass: dcmArchiveDevice
dicomDeviceName: dcm4chee-arc
dicomInstalled: TRUE
dcmUserIdentityNegotiation: SUPPORTS
dcmUserIdentityNegotiationKeycloakClientID: stale-client

dn: {ae}
objectClass: dicomNetworkAE
objectClass: dcmArchiveNetworkAE
dicomAETitle: DCM4CHEE
dcmUserIdentityNegotiation: NOT_SUPPORTED

dn: {other_ae}
objectClass: dicomNetworkAE
objectClass: dcmArchiveNetworkAE
dicomAETitle: WORKLIST
dcmUserIdentityNegotiation: SUPPORTS

dn: {escaped_ae}
objectClass: dicomNetworkAE
objectClass: dcmArchiveNetworkAE
dicomAETitle: DCM+TLS,1
dcmUserIdentityNegotiation: SUPPORTS
"""


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slapd")
    (tmp / "data").mkdir()
    (tmp / "slapd.d").mkdir()
    (tmp / "config.ldif").write_text(CONFIG_LDIF.format(
        tmp=tmp, schema=SCHEMA, suffix=SUFFIX, admin=ADMIN_DN, password=ADMIN_PW))
    (tmp / "data.ldif").write_text(DATA_LDIF.format(
        suffix=SUFFIX, device=DEVICE_DN, ae=AE_DN, other_ae=OTHER_AE_DN, escaped_ae=ESCAPED_AE_DN))
    subprocess.run(["slapadd", "-n0", "-F", tmp / "slapd.d", "-l", tmp / "config.ldif"],
                   check=True, capture_output=True)
    subprocess.run(["slapadd", "-n1", "-F", tmp / "slapd.d", "-l", tmp / "data.ldif"],
                   check=True, capture_output=True)
    port = free_port()
    uri = f"ldap://127.0.0.1:{port}"
    # -d 0 keeps slapd in the foreground, so the handle is slapd itself.
    proc = subprocess.Popen([SLAPD, "-d", "0", "-F", tmp / "slapd.d", "-h", uri + "/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"slapd exited: {proc.stderr.read().decode(errors='replace')}")
            if ldapsearch(uri, DEVICE_DN, check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail("slapd did not answer within 15 s")
            time.sleep(0.1)
        yield uri
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ldapsearch(uri, dn, check=True):
    return subprocess.run(
        ["ldapsearch", "-x", "-LLL", "-H", uri, "-D", ADMIN_DN, "-w", ADMIN_PW, "-s", "base", "-b", dn,
         "(objectClass=*)", *ATTRS],
        capture_output=True, text=True, check=check)


def attributes(uri, dn):
    out = ldapsearch(uri, dn).stdout
    found = {}
    for line in out.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in ATTRS:
            found[key] = value
    return found


def run_role(tmp_path, uri, check=False, **overrides):
    """Apply pacs_identity's dcm4chee backend to localhost; return (rc, stdout, changed)."""
    role_vars = {
        "pacs_identity_backend": "dcm4chee",
        "pacs_identity_dcm4chee_ldap_uri": uri,
        "pacs_identity_dcm4chee_bind_dn": ADMIN_DN,
        "pacs_identity_dcm4chee_bind_password": ADMIN_PW,
        "pacs_identity_dcm4chee_network_aes": ["DCM4CHEE", "DCM+TLS,1"],
        "pacs_identity_dcm4chee_user_identity_role": "radiology",
        "ansible_python_interpreter": SYSTEM_PYTHON,
    }
    role_vars.update(overrides)
    playbook = tmp_path / "dcm4chee.yml"
    playbook.write_text(
        "- name: Require user identity on the test archive\n"
        "  hosts: localhost\n"
        "  connection: local\n"
        "  gather_facts: true\n"
        "  roles:\n"
        "    - role: pacs_identity\n")
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps(role_vars))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_ROLES_PATH=str(REPO / "roles"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    # -v shows module arguments and results: the bind password must stay hidden there too.
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-v", "-i", "localhost,", "-e", f"@{extra}",
            str(playbook)]
    if check:
        argv += ["--check", "--diff"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    recap = re.search(r"localhost\s*:\s*ok=\d+\s+changed=(\d+)", proc.stdout)
    return proc.returncode, proc.stdout + proc.stderr, int(recap.group(1)) if recap else None


@pytest.fixture(scope="module")
def converged(slapd, tmp_path_factory):
    before = {dn: attributes(slapd, dn) for dn in (DEVICE_DN, AE_DN, OTHER_AE_DN, ESCAPED_AE_DN)}
    rc, out, changed = run_role(tmp_path_factory.mktemp("check"), slapd, check=True)
    assert rc == 0, out
    after_check = {dn: attributes(slapd, dn) for dn in (DEVICE_DN, AE_DN, OTHER_AE_DN, ESCAPED_AE_DN)}
    rc, out, changed_first = run_role(tmp_path_factory.mktemp("run"), slapd)
    assert rc == 0, out
    return {"before": before, "after_check": after_check, "check_changed": changed,
            "changed": changed_first, "uri": slapd}


def test_device_requires_user_identity_and_calling_host_validation(converged):
    assert converged["before"][DEVICE_DN]["dcmUserIdentityNegotiation"] == "SUPPORTS"
    device = attributes(converged["uri"], DEVICE_DN)
    assert device["dcmUserIdentityNegotiation"] == "REQUIRED"
    assert device["dcmValidateCallingAEHostname"] == "TRUE"
    assert device["dcmUserIdentityNegotiationRole"] == "radiology"


def test_unset_keycloak_client_id_is_removed_from_the_device(converged):
    assert converged["before"][DEVICE_DN]["dcmUserIdentityNegotiationKeycloakClientID"] == "stale-client"
    assert "dcmUserIdentityNegotiationKeycloakClientID" not in attributes(converged["uri"], DEVICE_DN)


def test_listed_network_ae_no_longer_overrides_the_device_with_not_supported(converged):
    assert converged["before"][AE_DN]["dcmUserIdentityNegotiation"] == "NOT_SUPPORTED"
    ae = attributes(converged["uri"], AE_DN)
    assert ae["dcmUserIdentityNegotiation"] == "REQUIRED"
    assert ae["dcmValidateCallingAEHostname"] == "TRUE"


def test_listed_network_ae_whose_title_needs_dn_escaping_is_found_and_set(converged):
    assert converged["before"][ESCAPED_AE_DN]["dcmUserIdentityNegotiation"] == "SUPPORTS"
    assert attributes(converged["uri"], ESCAPED_AE_DN)["dcmUserIdentityNegotiation"] == "REQUIRED"


def test_network_ae_not_listed_is_left_as_it_was(converged):
    assert attributes(converged["uri"], OTHER_AE_DN) == converged["before"][OTHER_AE_DN]


def test_check_mode_reports_the_changes_and_makes_none(converged):
    assert converged["check_changed"] and converged["check_changed"] > 0
    assert converged["after_check"] == converged["before"]


def test_first_run_changes_and_second_run_changes_nothing(converged, tmp_path):
    assert converged["changed"] > 0
    rc, out, changed = run_role(tmp_path, converged["uri"])
    assert rc == 0, out
    assert changed == 0, out


def test_wrong_bind_password_fails_and_changes_nothing(converged, tmp_path):
    before = attributes(converged["uri"], DEVICE_DN)
    rc, out, _changed = run_role(
        tmp_path, converged["uri"], pacs_identity_dcm4chee_bind_password="not-the-password",
        pacs_identity_dcm4chee_user_identity_role="someone-else")
    assert rc != 0
    assert "Invalid credentials" in out or "invalidCredentials" in out, out
    assert "not-the-password" not in out and ADMIN_PW not in out
    assert attributes(converged["uri"], DEVICE_DN) == before


def test_missing_bind_password_is_refused_before_any_change(slapd, tmp_path):
    rc, out, _changed = run_role(tmp_path, slapd, pacs_identity_dcm4chee_bind_password="")
    assert rc != 0
    assert "pacs_identity_dcm4chee_bind_password must be set" in out
