"""strongswan_tunnel with certificates, against the scenario's real charons, with real traffic.

Runs after test_tunnel.py (pytest takes the files in name order) and leaves the tunnel as
converge made it: each test re-applies converge.yml to both gateways with another auth for the
tunnel (the role's own PKI, the same with a CRL that revokes the cloud gateway, certificates of
the test's own), and the last one, with a finalizer behind it, puts the pre-shared key back.
Each accepted case has its refused twin: a revoked certificate keeps the tunnel down, a supplied
certificate that does not name its gateway's identity is refused before any change.
"""

import datetime
import ipaddress
import json
import os
import pathlib
import re
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from test_tunnel import (EPHEMERAL, GATEWAYS, INVENTORY, PSK_FILE, SCENARIO_DIR, TUNNEL, associate, cursors, host,
                         journal_since, sa_bytes_out, store_accepted)

SITE_ID, CLOUD_ID = "site-gw.hospital.example", "cloud-gw.pacs.example"
PKI = pathlib.Path(EPHEMERAL) / "pki" / TUNNEL
X509_FILES = (f"/etc/swanctl/x509/dicomsec-{TUNNEL}.pem", f"/etc/swanctl/x509ca/dicomsec-{TUNNEL}-ca.pem",
              f"/etc/swanctl/private/dicomsec-{TUNNEL}.key")
CRL_FILE = f"/etc/swanctl/x509crl/dicomsec-{TUNNEL}.crl"
SECRETS = f"/etc/swanctl/conf.d/dicomsec-{TUNNEL}.secrets.conf"
# The refused run waits this long for the CHILD_SA before it reports charon's log.
REFUSED_TIMEOUT = 16
CA_NAME = "site operator's tunnel CA"


def apply(auth, tmp_path, **extra):
    """converge.yml on both gateways with this auth for the tunnel; (rc, output)."""
    extra_file = tmp_path / f"extra-{len(list(tmp_path.iterdir()))}.json"
    extra_file.write_text(json.dumps({"scenario_tunnel_auth": auth, **extra}))
    extra_file.chmod(0o600)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(EPHEMERAL, "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    proc = subprocess.run(["ansible-playbook", "-i", INVENTORY, str(SCENARIO_DIR / "converge.yml"), "--limit", "ipsec_gateways",
                           "-e", f"@{extra_file}"], capture_output=True, text=True, timeout=900, check=False, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def sas(name):
    return host(name).check_output(f"swanctl --list-sas --ike {TUNNEL}")


def installed(name):
    return re.search(r"(?m)^\s+%s:\s+#[0-9]+, reqid [0-9]+, INSTALLED" % TUNNEL, sas(name)) is not None


def certificate_auth(log, peer_id):
    """charon's own words for a peer that proved itself with a signature, not a pre-shared key."""
    return re.search(r"authentication of '%s' with (?!pre-shared key)[^\n]*successful" % re.escape(peer_id), log)


def psk_auth(log, peer_id):
    return re.search(r"authentication of '%s' with pre-shared key successful" % re.escape(peer_id), log)


def stored_through_the_tunnel():
    before = sa_bytes_out("st-site-gw")
    res = associate("st-modality", dimse="store", expect="accepted")
    assert res["outcome"] == "accepted" and res["operation"]["succeeded"], res
    assert sa_bytes_out("st-site-gw") > before


def file_digest(name, path):
    return host(name).check_output(f"sha256sum {path}").split()[0]


# --- a PKI of the test's own, for the supplied case ------------------------------------------


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(obj):
    return obj.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def _cert(cn, key, issuer_cn, issuer_key, san=None, ca=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(issuer_cn)).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA384())


@pytest.fixture(scope="module")
def supplied():
    ca_key, site_key, cloud_key = (ec.generate_private_key(ec.SECP384R1()) for _key in range(3))
    ca = _cert(CA_NAME, ca_key, CA_NAME, ca_key, ca=True)
    site = _cert(SITE_ID, site_key, CA_NAME, ca_key, [x509.DNSName(SITE_ID)])
    cloud = _cert(CLOUD_ID, cloud_key, CA_NAME, ca_key, [x509.DNSName(CLOUD_ID)])
    # Issued by the same CA, but for another name: it must not stand for the cloud gateway.
    other = _cert("pacs.example", cloud_key, CA_NAME, ca_key,
                  [x509.DNSName("pacs.example"), x509.IPAddress(ipaddress.ip_address("198.18.30.93"))])
    return {"ca": _pem(ca), "site": (_pem(site), _key_pem(site_key)), "cloud": (_pem(cloud), _key_pem(cloud_key)),
            "other": _pem(other), "keys": [_key_pem(k) for k in (site_key, cloud_key)]}


def supplied_auth(s, cloud_cert=None):
    return {"method": "x509", "ca": s["ca"], "certificates": {
        "st-site-gw": {"certificate": s["site"][0], "key": s["site"][1]},
        "st-cloud-gw": {"certificate": cloud_cert or s["cloud"][0], "key": s["cloud"][1]}}}


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("x509")


@pytest.fixture(scope="module", autouse=True)
def psk_back_at_the_end(tmp):
    # Whatever fails on the way, the scenario is left with its pre-shared key tunnel.
    yield
    if not (installed("st-site-gw") and SECRETS in host("st-site-gw").check_output("ls /etc/swanctl/conf.d/")):
        apply({"method": "psk"}, tmp)


# --- the role's own PKI ---------------------------------------------------------------------


def test_role_built_pki_brings_the_tunnel_up_with_certificates_and_a_c_store_through_it(tmp):
    marks = cursors()
    rc, out = apply({"method": "x509"}, tmp)
    assert rc == 0, out[-4000:]
    # The PKI was made on the controller: a CA and one certificate per gateway naming its identity.
    assert (PKI / "ca.crt").exists() and (PKI / "ca.key").stat().st_mode & 0o777 == 0o600
    for gw, ident in (("st-site-gw", SITE_ID), ("st-cloud-gw", CLOUD_ID)):
        cert = x509.load_pem_x509_certificate((PKI / f"{gw}.crt").read_bytes())
        assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [ident]
        assert (PKI / f"{gw}.key").stat().st_mode & 0o777 == 0o600
    # The running SA is the new one: each end proved itself to the other with its certificate.
    site_log, cloud_log = journal_since("st-site-gw", marks["st-site-gw"]), journal_since("st-cloud-gw", marks["st-cloud-gw"])
    assert certificate_auth(site_log, CLOUD_ID), site_log[-3000:]
    assert certificate_auth(cloud_log, SITE_ID), cloud_log[-3000:]
    assert f'received end entity cert "CN={CLOUD_ID}"' in site_log, site_log[-3000:]
    assert not psk_auth(site_log, CLOUD_ID)
    assert installed("st-site-gw") and installed("st-cloud-gw")
    assert f"remote '{CLOUD_ID}'" in sas("st-site-gw")
    stored_through_the_tunnel()
    # The key went with the method: no pre-shared key file is left on either gateway.
    for gw in GATEWAYS:
        assert not host(gw).file(SECRETS).exists
        key = host(gw).file(X509_FILES[2])
        assert key.mode == 0o600 and key.user == "root"


def test_role_built_pki_run_again_changes_nothing_and_keeps_the_sa(tmp):
    before = sas("st-site-gw")
    rc, out = apply({"method": "x509"}, tmp)
    assert rc == 0, out[-4000:]
    assert re.search(r"st-site-gw\s*:\s*ok=\d+\s+changed=0", out) and re.search(r"st-cloud-gw\s*:\s*ok=\d+\s+changed=0", out), out[-3000:]
    # An IKE_SA of before (its unique id) is still up: an unchanged tunnel is left alone. Both
    # ends start the tunnel, so there may be two IKE_SAs, and charon may close one of them
    # between the two reads; a reloaded tunnel would have only new ones.
    after = sas("st-site-gw")
    ike_sas = re.compile(r"(?m)^%s: (#[0-9]+), ESTABLISHED" % re.escape(TUNNEL))
    assert set(ike_sas.findall(before)) & set(ike_sas.findall(after)), (before, after)


def test_crl_revoking_the_cloud_gateway_keeps_the_tunnel_down_and_the_modality_out(tmp):
    ca_key = serialization.load_pem_private_key((PKI / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((PKI / "ca.crt").read_bytes())
    cloud = x509.load_pem_x509_certificate((PKI / "st-cloud-gw.crt").read_bytes())
    now = datetime.datetime.now(datetime.timezone.utc)
    revoked = (x509.RevokedCertificateBuilder().serial_number(cloud.serial_number).revocation_date(now - datetime.timedelta(minutes=5))
               .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False).build())
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject).last_update(now - datetime.timedelta(minutes=5))
           .next_update(now + datetime.timedelta(days=1)).add_revoked_certificate(revoked)
           .add_extension(x509.CRLNumber(1), critical=False)
           # RFC 5280 requires it in every CRL; charon finds a CA's CRL by it (without it: "certificate
           # status is not available" for every peer, a refusal for the wrong reason).
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
           .sign(ca_key, hashes.SHA384()))
    marks = cursors()
    rc, out = apply({"method": "x509", "crl": crl.public_bytes(serialization.Encoding.PEM).decode()}, tmp,
                    strongswan_tunnel_verify_timeout=REFUSED_TIMEOUT)
    # The role's CHILD_SA check fails, with charon's words for why.
    assert rc != 0, out[-4000:]
    assert "The CHILD_SA of cloudpacs is not installed" in out, out[-4000:]
    assert re.search(r"certificate was revoked", out), out[-4000:]
    site_log = journal_since("st-site-gw", marks["st-site-gw"])
    assert re.search(r"certificate was revoked on .*key compromise", site_log), site_log[-3000:]
    # The site's certificate is not on the list: the cloud gateway found the CRL and its status good.
    cloud_log = journal_since("st-cloud-gw", marks["st-cloud-gw"])
    assert 'certificate status is good' in cloud_log, cloud_log[-3000:]
    # strict: the CRL is in place on both ends, and the old SA did not survive the change.
    for gw in GATEWAYS:
        assert host(gw).file(CRL_FILE).exists
        assert "revocation = strict" in host(gw).file(f"/etc/swanctl/conf.d/dicomsec-{TUNNEL}.conf").content_string
    assert not installed("st-site-gw") and not installed("st-cloud-gw")
    res = associate("st-modality", dimse="echo", expect="denied", timeout=4)
    assert res["outcome"] in ("timeout", "refused", "aborted"), res


# --- certificates of the operator's own -----------------------------------------------------


def test_supplied_certificates_bring_the_tunnel_up_and_the_crl_is_dropped(tmp, supplied):
    marks = cursors()
    rc, out = apply(supplied_auth(supplied), tmp)
    assert rc == 0, out[-4000:]
    for key in supplied["keys"]:
        assert key.splitlines()[1] not in out
    site_log = journal_since("st-site-gw", marks["st-site-gw"])
    assert certificate_auth(site_log, CLOUD_ID), site_log[-3000:]
    assert CA_NAME in site_log, site_log[-3000:]
    # The CRL of the role's CA is gone from the gateways, and from charon.
    for gw in GATEWAYS:
        assert not host(gw).file(CRL_FILE).exists
        assert "revocation = strict" not in host(gw).file(f"/etc/swanctl/conf.d/dicomsec-{TUNNEL}.conf").content_string
    assert installed("st-site-gw") and installed("st-cloud-gw")
    assert host("st-site-gw").file(X509_FILES[0]).content_string.strip() == supplied["site"][0].strip()
    stored_through_the_tunnel()


def test_supplied_certificate_of_another_identity_is_refused_before_any_change(tmp, supplied):
    before = {gw: [file_digest(gw, f) for f in X509_FILES] for gw in GATEWAYS}
    sa_before = re.search(r"#[0-9]+", sas("st-site-gw")).group(0)
    rc, out = apply(supplied_auth(supplied, cloud_cert=supplied["other"]), tmp)
    assert rc != 0, out[-4000:]
    assert (f"strongswan_tunnel_tunnels ({TUNNEL}).auth.certificates.st-cloud-gw does not match the IKE identity of its gateway, "
            f"{CLOUD_ID}: its subject alternative names are DNS:pacs.example, IP:198.18.30.93, DNS:{CLOUD_ID} is needed") in out, out[-4000:]
    # Both ends stopped at the check: not one file changed, the same SA still carries the traffic.
    assert re.search(r"st-site-gw\s*:\s*ok=\d+\s+changed=0", out) and re.search(r"st-cloud-gw\s*:\s*ok=\d+\s+changed=0", out), out[-3000:]
    assert {gw: [file_digest(gw, f) for f in X509_FILES] for gw in GATEWAYS} == before
    assert re.search(r"#[0-9]+", sas("st-site-gw")).group(0) == sa_before
    stored_through_the_tunnel()


# --- back to the pre-shared key --------------------------------------------------------------


def test_back_to_the_pre_shared_key_the_certificates_go_and_the_tunnel_returns(tmp):
    marks = cursors()
    rc, out = apply({"method": "psk"}, tmp)
    assert rc == 0, out[-4000:]
    site_log = journal_since("st-site-gw", marks["st-site-gw"])
    assert psk_auth(site_log, CLOUD_ID), site_log[-3000:]
    key = PSK_FILE.read_text().split()[0]
    assert key not in out
    for gw in GATEWAYS:
        assert f'secret = "{key}"' in host(gw).file(SECRETS).content_string
        for path in X509_FILES + (CRL_FILE,):
            assert not host(gw).file(path).exists, (gw, path)
    assert installed("st-site-gw") and installed("st-cloud-gw")
    stored_through_the_tunnel()
    assert store_accepted()
