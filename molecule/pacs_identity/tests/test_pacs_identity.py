"""pacs_identity: each PACS accepts the associations it should and refuses the rest.

Every association is a real one, made with pynetdicom from the lab host that
matters (the allowed modality, an unknown modality, an impostor using the
allowed modality's AE title from another address, the identity gateway), so
the PACS judges each by its true source address. Every accepted case has a
refused twin next to it.
"""

import json
import os
import pathlib
import shlex

import pytest
import testinfra
import yaml

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO = yaml.safe_load((pathlib.Path(__file__).parents[1] / "vars" / "scenario.yml").read_text())

AET = SCENARIO["scenario_pacs_aet"]
PORT = SCENARIO["scenario_dicom_port"]
REST_PORT = SCENARIO["scenario_rest_port"]
PACS = SCENARIO["scenario_pacs_addresses"]
PACS_V6 = SCENARIO["scenario_pacs_ipv6_addresses"]
MODALITY_AET = SCENARIO["scenario_modality"]["aet"]
UNKNOWN_AET = SCENARIO["scenario_unknown_aet"]
VIEWER_AET = SCENARIO["scenario_viewer"]["aet"]
CLIENT_DIR = SCENARIO["scenario_client_dir"]
USER = SCENARIO["scenario_rest_user"]
PASSWORD = SCENARIO["scenario_rest_password"]

TRUSTED_CERT = ("--cert", f"{CLIENT_DIR}/modality-client.crt", "--key", f"{CLIENT_DIR}/modality-client.key")
ROGUE_CERT = ("--cert", f"{CLIENT_DIR}/rogue-client.crt", "--key", f"{CLIENT_DIR}/rogue-client.key")


def host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def associate(src, pacs, calling, called=AET, tls=False, extra=(), address=None, store=False):
    """Run one association attempt from lab host `src` to PACS `pacs`; return the probe's report."""
    argv = ["python3", f"{CLIENT_DIR}/dicom_probe.py", "--host", address or PACS[pacs], "--port", str(PORT),
            "--called", called, "--calling", calling]
    if tls:
        argv += ["--tls", "--ca", f"{CLIENT_DIR}/lab-ca.crt", *extra]
    if store:
        argv.append("--store")
    out = host(src).check_output(shlex.join(argv))
    return json.loads(out.splitlines()[-1])


def rest_status(pacs_host, url, user=None, password=None):
    """HTTP status of a GET on Orthanc's REST API, sent from `pacs_host`."""
    script = (
        "import base64, sys, urllib.request, urllib.error\n"
        "req = urllib.request.Request(sys.argv[1])\n"
        "if len(sys.argv) > 2:\n"
        "    token = base64.b64encode(f'{sys.argv[2]}:{sys.argv[3]}'.encode()).decode()\n"
        "    req.add_header('Authorization', 'Basic ' + token)\n"
        "try:\n"
        "    print(urllib.request.urlopen(req, timeout=5).status)\n"
        "except urllib.error.HTTPError as exc:\n"
        "    print(exc.code)\n"
        "except OSError as exc:\n"
        "    print('error', exc)\n"
    )
    argv = ["python3", "-c", script, url] + ([user, password] if user is not None else [])
    return host(pacs_host).check_output(shlex.join(argv)).strip()


REJECTED_CALLING_AE = {"outcome": "rejected", "result": 1, "source": 1, "reason": 3}
REJECTED_CALLED_AE = {"outcome": "rejected", "result": 1, "source": 1, "reason": 7}


def rejection(report):
    return {k: report.get(k) for k in ("outcome", "result", "source", "reason")}


# --- AE title whitelisting bound to addresses (plain DICOM PACS) -------------------------

def test_registered_ae_from_its_own_host_is_accepted_and_answers_echo():
    report = associate("pacs-id-modality", "pacs-id-pacs", MODALITY_AET)
    assert report["outcome"] == "accepted", report
    assert report["echo_status"] == 0


def test_unknown_calling_ae_is_rejected_with_reason_3():
    report = associate("pacs-id-unknown", "pacs-id-pacs", UNKNOWN_AET)
    assert rejection(report) == REJECTED_CALLING_AE, report


def test_unknown_calling_ae_from_the_registered_host_is_rejected_with_reason_3():
    # The address alone earns nothing either: the AE title must match too.
    report = associate("pacs-id-modality", "pacs-id-pacs", UNKNOWN_AET)
    assert rejection(report) == REJECTED_CALLING_AE, report


def test_wrong_called_ae_is_rejected_with_reason_7():
    report = associate("pacs-id-modality", "pacs-id-pacs", MODALITY_AET, called="NOTTHEPACS")
    assert rejection(report) == REJECTED_CALLED_AE, report


def test_registered_ae_from_another_address_is_rejected_with_reason_3():
    report = associate("pacs-id-impostor", "pacs-id-pacs", MODALITY_AET)
    assert rejection(report) == REJECTED_CALLING_AE, report


# --- Per-modality services from the inventory -------------------------------------------

def test_modality_allowed_to_store_can_store():
    report = associate("pacs-id-modality", "pacs-id-pacs", MODALITY_AET, store=True)
    assert report["outcome"] == "accepted", report
    assert report["store"] == 0, report


def test_modality_allowed_only_to_echo_cannot_store():
    # Orthanc accepts the association of a registered AE, then refuses the
    # request it may not make: not an association reject.
    report = associate("pacs-id-unknown", "pacs-id-pacs", VIEWER_AET, store=True)
    assert report["outcome"] == "accepted", report
    assert report["echo_status"] == 0
    assert report["store"] == "aborted", report


# --- DICOM TLS with client certificates ----------------------------------------------------

def test_tls_association_with_a_trusted_client_certificate_is_accepted():
    report = associate("pacs-id-modality", "pacs-id-tls", MODALITY_AET, tls=True, extra=TRUSTED_CERT)
    assert report["tls"] == "ok", report
    assert report["outcome"] == "accepted", report
    assert report["echo_status"] == 0


def test_plaintext_association_to_the_tls_pacs_is_refused():
    report = associate("pacs-id-modality", "pacs-id-tls", MODALITY_AET)
    assert report["outcome"] == "aborted", report


def test_tls_without_a_client_certificate_is_refused_at_the_tls_layer():
    report = associate("pacs-id-modality", "pacs-id-tls", MODALITY_AET, tls=True)
    assert report["tls"].startswith("error:"), report
    assert "CERTIFICATE_REQUIRED" in report["tls"] or "HANDSHAKE_FAILURE" in report["tls"], report
    assert report["outcome"] != "accepted", report


def test_tls_with_a_client_certificate_from_an_untrusted_ca_is_refused():
    report = associate("pacs-id-modality", "pacs-id-tls", MODALITY_AET, tls=True, extra=ROGUE_CERT)
    assert report["tls"].startswith("error:"), report
    assert "UNKNOWN_CA" in report["tls"] or "BAD_CERTIFICATE" in report["tls"], report
    assert report["outcome"] != "accepted", report


def test_tls_pacs_still_rejects_an_unknown_calling_ae_with_a_trusted_certificate():
    # A valid certificate opens the TLS session, not the AE whitelist.
    report = associate("pacs-id-modality", "pacs-id-tls", UNKNOWN_AET, tls=True, extra=TRUSTED_CERT)
    assert rejection(report) == REJECTED_CALLING_AE, report


# --- Pinning to the identity gateway ------------------------------------------------------

def test_pinned_pacs_accepts_the_registered_ae_through_the_gateway():
    report = associate("pacs-id-gateway", "pacs-id-pinned", MODALITY_AET)
    assert report["outcome"] == "accepted", report


def test_pinned_pacs_refuses_the_modality_connecting_directly():
    # The modality's own address is registered on the other PACS; here only the
    # gateway may connect, so identity checks there cannot be walked around.
    report = associate("pacs-id-modality", "pacs-id-pinned", MODALITY_AET)
    assert report["tcp"] == "refused", report
    assert report["outcome"] == "unreachable", report


def test_pinned_pacs_refuses_the_modality_over_ipv6_too():
    report = associate("pacs-id-modality", "pacs-id-pinned", MODALITY_AET, address=PACS_V6["pacs-id-pinned"])
    assert report["tcp"] == "refused", report


def test_pinned_pacs_rejects_an_unknown_ae_even_through_the_gateway():
    report = associate("pacs-id-gateway", "pacs-id-pinned", UNKNOWN_AET)
    assert rejection(report) == REJECTED_CALLING_AE, report


# --- REST API -----------------------------------------------------------------------------

LOCAL_REST = f"http://127.0.0.1:{REST_PORT}/system"


@pytest.mark.parametrize("pacs", sorted(PACS))
def test_rest_api_answers_the_configured_user(pacs):
    assert rest_status(pacs, LOCAL_REST, USER, PASSWORD) == "200"


@pytest.mark.parametrize("pacs", sorted(PACS))
def test_rest_api_refuses_requests_without_credentials(pacs):
    assert rest_status(pacs, LOCAL_REST) == "401"


@pytest.mark.parametrize("pacs", sorted(PACS))
@pytest.mark.parametrize(("user", "password"), [("orthanc", "orthanc"), ("admin", "admin"), (USER, "orthanc")])
def test_rest_api_refuses_default_credentials(pacs, user, password):
    assert rest_status(pacs, LOCAL_REST, user, password) == "401"


def test_rest_api_refuses_other_hosts_when_no_listen_address_is_set():
    # RemoteAccessAllowed false: even the right credentials are refused off-host
    # (Orthanc 1.10 answers 401), while the same request on loopback succeeds.
    url = f"http://{PACS['pacs-id-pacs']}:{REST_PORT}/system"
    assert rest_status("pacs-id-modality", url, USER, PASSWORD) == "401"
    assert rest_status("pacs-id-pacs", LOCAL_REST, USER, PASSWORD) == "200"


def test_rest_api_answers_other_hosts_on_its_listen_address():
    url = f"http://{PACS['pacs-id-pinned']}:{REST_PORT}/system"
    assert rest_status("pacs-id-modality", url, USER, PASSWORD) == "200"
    assert rest_status("pacs-id-modality", url) == "401"


def test_rest_api_refuses_other_hosts_on_any_other_address():
    # Orthanc 1.10 binds every address; the firewall table resets the rest.
    url = f"http://[{PACS_V6['pacs-id-pinned']}]:{REST_PORT}/system"
    status = rest_status("pacs-id-modality", url, USER, PASSWORD)
    assert status.startswith("error") and "refused" in status, status


# --- How Orthanc runs ---------------------------------------------------------------------

@pytest.mark.parametrize("pacs", sorted(PACS))
def test_orthanc_runs_with_tcp_nodelay(pacs):
    h = host(pacs)
    pid = h.check_output("systemctl show -p MainPID --value orthanc")
    assert pid != "0"
    environ = h.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
    assert "TCP_NODELAY=1" in environ.splitlines()


@pytest.mark.parametrize("pacs", sorted(PACS))
def test_secrets_are_readable_by_orthanc_only(pacs):
    h = host(pacs)
    creds = h.file("/etc/orthanc/credentials.json")
    assert (creds.user, creds.group, creds.mode) == ("root", "orthanc", 0o640)
    assert not h.file("/etc/orthanc/tls/server.key").exists or (
        h.file("/etc/orthanc/tls/server.key").mode == 0o640
        and h.file("/etc/orthanc/tls/server.key").group == "orthanc"
    )


def test_private_key_exists_only_where_tls_is_on():
    assert host("pacs-id-tls").file("/etc/orthanc/tls/server.key").exists
    assert not host("pacs-id-pacs").file("/etc/orthanc/tls").exists
