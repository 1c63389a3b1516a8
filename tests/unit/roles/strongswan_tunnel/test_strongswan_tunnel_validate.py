"""strongswan_tunnel refuses bad input with a clear error before it changes anything.

Each case runs the role's validate entry point on localhost in check mode, with a second
gateway (peer-gw) added to the inventory, and checks that the play stops with a message naming
the variable and with nothing changed. Each refusal has an accepted twin: the same input made
valid passes. Certificates for the x509 cases are made here with cryptography.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
from pathlib import Path

import pytest
from role_validation import failed_tasks, run_all, run_check, validate_tasks

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[4]
PSK = "lab-only-Tunnel-Key-4Qz8mW2pX7rL9vB3nK6t"
SHORT_PSK = "lab-only-short-Key-7Hq"

PLAY = """- name: Check strongswan_tunnel input
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Add the tunnel's other end to the inventory
      ansible.builtin.add_host:
        name: peer-gw
        ansible_connection: local
      changed_when: false
    - name: Run the role's validate entry point
      ansible.builtin.include_role:
        name: strongswan_tunnel
        tasks_from: validate
"""

SITE = {"host": "localhost", "address": "198.18.20.91", "id": "site-gw.hospital.example", "subnets": ["198.18.10.0/24"]}
CLOUD = {"host": "peer-gw", "address": "198.18.20.93", "id": "cloud-gw.pacs.example", "subnets": ["198.18.30.0/24"]}
TUNNEL = {"name": "cloudpacs", "gateways": [SITE, CLOUD], "auth": {"method": "psk", "psk": PSK}}


def tunnel(**changes):
    return {"strongswan_tunnel_tunnels": [{**TUNNEL, **changes}]}


def gateways(site=None, cloud=None):
    return tunnel(gateways=[{**SITE, **(site or {})}, {**CLOUD, **(cloud or {})}])


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(obj):
    return obj.public_bytes(serialization.Encoding.PEM).decode()


def _cert(subject, issuer, key, issuer_key, san=None, ca=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer)).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA384())


def _key():
    return ec.generate_private_key(ec.SECP384R1())


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


CA_KEY, ROGUE_KEY, SITE_KEY, CLOUD_KEY = _key(), _key(), _key(), _key()
CA = _cert("tunnel CA", "tunnel CA", CA_KEY, CA_KEY, ca=True)
ROGUE = _cert("rogue CA", "rogue CA", ROGUE_KEY, ROGUE_KEY, ca=True)
SITE_CERT = _cert("site", "tunnel CA", SITE_KEY, CA_KEY, [x509.DNSName(SITE["id"])])
CLOUD_CERT = _cert("cloud", "tunnel CA", CLOUD_KEY, CA_KEY, [x509.DNSName(CLOUD["id"])])
WRONG_SAN = _cert("cloud", "tunnel CA", CLOUD_KEY, CA_KEY, [x509.DNSName("other.pacs.example")])
IP_CERT = _cert("cloud", "tunnel CA", CLOUD_KEY, CA_KEY, [x509.IPAddress(ipaddress.ip_address(CLOUD["address"]))])
ROGUE_CERT = _cert("cloud", "rogue CA", CLOUD_KEY, ROGUE_KEY, [x509.DNSName(CLOUD["id"])])


def x509_auth(cloud_cert=CLOUD_CERT, **extra):
    return tunnel(auth={"method": "x509", "ca": _pem(CA), "certificates": {
        "localhost": {"certificate": _pem(SITE_CERT), "key": _key_pem(SITE_KEY)},
        "peer-gw": {"certificate": _pem(cloud_cert), "key": _key_pem(CLOUD_KEY)}}, **extra})


# name -> (variables, text the error must contain; None: must pass)
CASES = {
    "valid_psk": (tunnel(), None),
    "psk_generated_when_left_out": (tunnel(auth={"method": "psk"}), None),
    "psk_shorter_than_32": (tunnel(auth={"method": "psk", "psk": SHORT_PSK}),
                            "strongswan_tunnel_tunnels[0] (cloudpacs).auth.psk is shorter than 32 characters"),
    "psk_of_32": (tunnel(auth={"method": "psk", "psk": "k" * 32}), None),
    "psk_with_a_quote": (tunnel(auth={"method": "psk", "psk": "lab-only-" + '"' * 30}), "holds a quote"),
    "identical_subnets": (gateways(cloud={"subnets": ["198.18.10.0/24"]}),
                          "198.18.10.0/24 and 198.18.10.0/24 are the same subnet on both sides of the tunnel"),
    "overlapping_subnets": (gateways(cloud={"subnets": ["198.18.0.0/16"]}),
                            "198.18.10.0/24 and 198.18.0.0/16 are overlapping subnets on both sides"),
    "adjacent_subnets": (gateways(cloud={"subnets": ["198.18.11.0/24"]}), None),
    "overlapping_ipv6_subnets": (gateways(site={"subnets": ["198.18.10.0/24", "2001:db8:d1c0:10::/64"]},
                                          cloud={"subnets": ["198.18.30.0/24", "2001:db8:d1c0::/48"]}),
                                 "2001:db8:d1c0:10::/64 and 2001:db8:d1c0::/48 are overlapping subnets"),
    "ipv6_subnets": (gateways(site={"subnets": ["2001:db8:d1c0:10::/64"]}, cloud={"subnets": ["2001:db8:d1c0:30::/64"]}), None),
    "subnet_with_host_bits": (gateways(cloud={"subnets": ["198.18.30.1/24"]}),
                              'gateways[1] (peer-gw).subnets: "198.18.30.1/24" is not a subnet with its host bits clear'),
    "no_subnets": (gateways(cloud={"subnets": []}), "gateways[1] (peer-gw).subnets must list at least one subnet"),
    "gateway_missing_from_inventory": (gateways(cloud={"host": "ghost-gw"}),
                                       "gateways[1] (ghost-gw).host ghost-gw is not in the inventory"),
    "same_gateway_twice": (gateways(cloud={"host": "localhost"}), "both ends are localhost"),
    "address_not_an_address": (gateways(cloud={"address": "cloud.pacs.example"}),
                               '(peer-gw).address "cloud.pacs.example" is not an IP address'),
    "peer_address_inside_its_subnets": (gateways(cloud={"subnets": ["198.18.20.0/24"]}),
                                        "(peer-gw).address 198.18.20.93 lies inside its own protected subnets"),
    "same_identity_twice": (gateways(cloud={"id": SITE["id"]}), "both ends have the IKE identity"),
    "identity_with_a_brace": (gateways(cloud={"id": "cloud}gw"}), "cannot be an IKE identity"),
    "identity_left_out": (gateways(site={"id": None}), None),
    "weak_ike_proposal": (tunnel(proposals=["aes128-sha1-modp1024"]),
                          '.proposals[0] "aes128-sha1-modp1024" uses aes128, sha1, modp1024, below the floor'),
    "ike_proposal_without_dh": (tunnel(proposals=["aes256gcm16-prfsha384"]), "names no key exchange"),
    "ike_proposal_without_prf": (tunnel(proposals=["aes256gcm16-ecp384"]), "names no PRF"),
    "cbc_without_integrity": (tunnel(proposals=["aes256-prfsha384-ecp384"]), "names no integrity algorithm"),
    "strong_cbc_proposal": (tunnel(proposals=["aes256-sha384-prfsha384-ecp384"]), None),
    "weak_esp_proposal": (tunnel(esp_proposals=["aes256gcm16-modp2048"]),
                          '.esp_proposals[0] "aes256gcm16-modp2048" uses modp2048, below the floor'),
    "esp_with_esn": (tunnel(esp_proposals=["aes256gcm16-x25519-esn"]), None),
    "weak_proposal_explicitly_allowed": (tunnel(proposals=["aes128-sha1-modp1024"], allow_weak_proposals=True), None),
    "weak_default_proposal": ({**tunnel(), "strongswan_tunnel_proposals": ["3des-md5-modp1024"]},
                              '.proposals[0] "3des-md5-modp1024" uses 3des, md5, modp1024, below the floor'),
    "empty_proposals": (tunnel(esp_proposals=[]), "(cloudpacs).esp_proposals is empty"),
    "lifetime_not_longer_than_rekey": (tunnel(child_rekey_time="1h", child_life_time="60m"),
                                       "child_life_time must be longer than child_rekey_time"),
    "time_in_words": (tunnel(rekey_time="4 hours"), '(cloudpacs).rekey_time "4 hours" must be a number of seconds'),
    "dpd_off": (tunnel(dpd_delay="0"), "dpd_delay 0 turns dead-peer detection off"),
    "one_gateway": (tunnel(gateways=[SITE]), "(cloudpacs).gateways must name exactly two gateways"),
    "name_with_a_space": (tunnel(name="cloud pacs"), "(cloud pacs).name must be a lowercase letter"),
    "name_twice": ({"strongswan_tunnel_tunnels": [TUNNEL, TUNNEL]}, "strongswan_tunnel_tunnels[1] (cloudpacs).name is used by an earlier tunnel"),
    "trap_with_libipsec": ({**tunnel(start_action="trap"), "strongswan_tunnel_backend": "libipsec"},
                           "tunnels cloudpacs use start_action trap"),
    "trap_with_the_kernel": (tunnel(start_action="trap"), None),
    "guard_priority_before_strongswans_table": (
        {**tunnel(), "strongswan_tunnel_leak_guard_priority": 100}, "strongswan_tunnel_leak_guard_priority 100 must be 221-32765"),
    "protected_port_out_of_range": ({**tunnel(), "strongswan_tunnel_protected_ports": [104, "4242-70000"]},
                                    "strongswan_tunnel_protected_ports ['4242-70000'] are not ports"),
    "dicom_ports_only": ({**tunnel(), "strongswan_tunnel_protected_ports": [104, 11112, "4242-4243"]}, None),
    "x509_supplied": (x509_auth(), None),
    "x509_supplied_with_crl": (x509_auth(crl="-----BEGIN X509 CRL-----\n-----END X509 CRL-----\n"), None),
    "x509_ip_identity": (
        {"strongswan_tunnel_tunnels": [{**x509_auth(cloud_cert=IP_CERT)["strongswan_tunnel_tunnels"][0],
                                        "gateways": [SITE, {**CLOUD, "id": CLOUD["address"]}]}]}, None),
    "x509_certificate_of_another_identity": (
        x509_auth(cloud_cert=WRONG_SAN),
        "auth.certificates.peer-gw does not match the IKE identity of its gateway, cloud-gw.pacs.example: its subject alternative "
        "names are DNS:other.pacs.example, DNS:cloud-gw.pacs.example is needed"),
    "x509_certificate_of_another_ca": (x509_auth(cloud_cert=ROGUE_CERT), "auth.certificates.peer-gw was not issued by the auth.ca of the tunnel"),
    "x509_without_ca": (tunnel(auth={"method": "x509", "certificates": {"localhost": {"certificate": "x", "key": "y"}}}),
                        "(cloudpacs).auth.ca is needed with supplied certificates"),
    "x509_missing_a_certificate": (tunnel(auth={"method": "x509", "ca": _pem(CA), "certificates": {
        "localhost": {"certificate": _pem(SITE_CERT), "key": _key_pem(SITE_KEY)}}}), "auth.certificates.peer-gw needs certificate and key"),
    "x509_generated": (tunnel(auth={"method": "x509"}), None),
    # Caught by meta/argument_specs.yml at the entry point, naming the variable.
    "unknown_auth_method": (tunnel(auth={"method": "kerberos"}), "kerberos"),
    "unknown_backend": ({**tunnel(), "strongswan_tunnel_backend": "userspace"}, "strongswan_tunnel_backend"),
    "misspelled_tunnel_key": (tunnel(gatways=[]), "gatways"),
}


def run_case(tmp_path, name, overrides):
    # -vvv, as an operator debugging a run would see it: no key may show there either.
    return run_check(tmp_path / name, "strongswan_tunnel", overrides, verbose=True, play=PLAY)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("validate")
    return run_all({name: functools.partial(run_case, tmp, name, overrides) for name, (overrides, _error) in CASES.items()})


@pytest.mark.parametrize("name", [n for n, (_vars, err) in CASES.items() if err is None])
def test_valid_input_passes_validation(results, name):
    res = results[name]
    assert res["rc"] == 0, res["out"][-4000:]
    assert res["changed"] == 0, res["out"][-4000:]


@pytest.mark.parametrize("name", [n for n, (_vars, err) in CASES.items() if err is not None])
def test_bad_input_is_refused_with_a_clear_error_and_no_change(results, name):
    res = results[name]
    assert res["rc"] != 0, res["out"][-4000:]
    assert CASES[name][1] in res["out"], res["out"][-4000:]
    assert res["changed"] == 0, res["out"][-4000:]


def test_keys_never_appear_in_verbose_output(results):
    for name in ("valid_psk", "psk_shorter_than_32", "identical_subnets", "x509_supplied", "x509_certificate_of_another_identity"):
        out = results[name]["out"]
        for secret in (PSK, SHORT_PSK, _key_pem(SITE_KEY).splitlines()[1], _key_pem(CLOUD_KEY).splitlines()[1]):
            assert secret not in out, name


def test_every_check_of_validate_yml_is_made_to_fail_by_some_case(results):
    checks = [t["name"] for t in validate_tasks("strongswan_tunnel") if "ansible.builtin.assert" in t]
    failed_in = failed_tasks(results, CASES)
    untested = [name for name in checks if f"strongswan_tunnel : {name}" not in failed_in]
    assert not untested, untested
