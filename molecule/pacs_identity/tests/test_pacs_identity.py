"""pacs_identity: each PACS accepts the associations it should and refuses the rest.

Every association is a real one, made with the collection's own
dicomsec.hardening.dicom_association module, run on the lab host that matters
(the allowed modality, an unknown modality, an impostor using the allowed
modality's AE title from another address, the identity gateway), so the PACS
judges each by its true source address and the test exercises what users run.
Every accepted case has a refused twin next to it.

The pinned PACS runs both roles: its own whitelist (nftables_whitelist, table
inet dicomsec) and pacs_identity's pins, an nftables_whitelist table of their
own. prepare left it as an earlier version of pacs_identity did, so the
converge also migrated it.
"""

import json
import os
import pathlib
import re
import shlex
import subprocess
import time

import pytest
import testinfra
import yaml

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO_DIR = pathlib.Path(__file__).parents[1]
SCENARIO = yaml.safe_load((SCENARIO_DIR / "vars" / "scenario.yml").read_text())

AET = SCENARIO["scenario_pacs_aet"]
PORT = SCENARIO["scenario_dicom_port"]
REST_PORT = SCENARIO["scenario_rest_port"]
PACS = SCENARIO["scenario_pacs_addresses"]
PACS_V6 = SCENARIO["scenario_pacs_ipv6_addresses"]
GATEWAY = SCENARIO["scenario_gateway_address"]
MODALITY_AET = SCENARIO["scenario_modality"]["aet"]
MODALITY_ADDRESS = SCENARIO["scenario_modality"]["host"]
UNKNOWN_AET = SCENARIO["scenario_unknown_aet"]
VIEWER_AET = SCENARIO["scenario_viewer"]["aet"]
CERTS = SCENARIO["scenario_client_dir"]
USER = SCENARIO["scenario_rest_user"]
PASSWORD = SCENARIO["scenario_rest_password"]

TRUSTED_CERT = {"cert_file": f"{CERTS}/modality-client.crt", "key_file": f"{CERTS}/modality-client.key"}
ROGUE_CERT = {"cert_file": f"{CERTS}/rogue-client.crt", "key_file": f"{CERTS}/rogue-client.key"}

PINS_TABLE = "pacs_identity_pins"
PINS_UNIT = f"dicomsec-nftables@{PINS_TABLE}.service"
LOG_FILE = "/var/log/ulog/dicomsec-refused.log"


def host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def associate(src, pacs, calling, called=AET, tls=None, address=None, dimse="echo", expect="any", **extra):
    """One association from lab host `src` to PACS `pacs` with dicom_association; its result.

    With `expect` other than any, the module itself asserts the outcome and the
    call raises if the PACS answered otherwise.
    """
    args = {"host": address or PACS[pacs], "port": PORT, "called_ae": called, "calling_ae": calling,
            "dimse": dimse, "expect": expect, "timeout": 5, **extra}
    if tls is not None:
        args["tls"] = {"enabled": True, "ca_file": f"{CERTS}/lab-ca.crt", **tls}
    return host(src).ansible("dicomsec.hardening.dicom_association", json.dumps(args), check=False)


def reject(result):
    return {k: (result["reject"] or {}).get(k) for k in ("result", "source", "reason")}


CALLING_AE_NOT_RECOGNIZED = {"result": 1, "source": 1, "reason": 3}
CALLED_AE_NOT_RECOGNIZED = {"result": 1, "source": 1, "reason": 7}


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


# --- AE title whitelisting bound to addresses (plain DICOM PACS) -------------------------

def test_registered_ae_from_its_own_host_is_accepted_and_answers_echo():
    res = associate("pacs-id-modality", "pacs-id-pacs", MODALITY_AET, expect="accepted")
    assert res["outcome"] == "accepted", res
    assert res["operation"]["name"] == "C-ECHO" and res["operation"]["status"] == 0, res


def test_unknown_calling_ae_is_rejected_with_reason_3():
    res = associate("pacs-id-unknown", "pacs-id-pacs", UNKNOWN_AET, expect_reason="calling-ae-not-recognized")
    assert reject(res) == CALLING_AE_NOT_RECOGNIZED, res


def test_unknown_calling_ae_from_the_registered_host_is_rejected_with_reason_3():
    # The address alone earns nothing either: the AE title must match too.
    res = associate("pacs-id-modality", "pacs-id-pacs", UNKNOWN_AET, expect_reason="calling-ae-not-recognized")
    assert reject(res) == CALLING_AE_NOT_RECOGNIZED, res


def test_wrong_called_ae_is_rejected_with_reason_7():
    res = associate("pacs-id-modality", "pacs-id-pacs", MODALITY_AET, called="NOTTHEPACS",
                    expect_reason="called-ae-not-recognized")
    assert reject(res) == CALLED_AE_NOT_RECOGNIZED, res


def test_registered_ae_from_another_address_is_rejected_with_reason_3():
    res = associate("pacs-id-impostor", "pacs-id-pacs", MODALITY_AET, expect_reason="calling-ae-not-recognized")
    assert reject(res) == CALLING_AE_NOT_RECOGNIZED, res


# --- Orthanc's refusals in the journal ------------------------------------------------------

IMPOSTOR_ADDRESS = "198.18.10.62"
UNKNOWN_ADDRESS = SCENARIO["scenario_viewer"]["host"]  # the unknown modality's host


def journal_cursor(name):
    """The cursor of the newest entry in `name`'s journal: entries after it are new."""
    return json.loads(host(name).check_output("journalctl --quiet --no-pager --output=json --lines=1"))["__CURSOR"]


def orthanc_journal(name, cursor):
    """Messages under the identifier orthanc in `name`'s journal after `cursor`."""
    out = host(name).check_output(
        f"journalctl --quiet --no-pager --output=json --identifier=orthanc --after-cursor={shlex.quote(cursor)}")
    return [str(json.loads(line).get("MESSAGE", "")) for line in out.splitlines() if line.startswith("{")]


def journaled(name, cursor, needle, timeout=10):
    """Poll `name`'s orthanc journal until a message after `cursor` contains `needle`; the messages."""
    deadline = time.time() + timeout
    while True:
        messages = orthanc_journal(name, cursor)
        if any(needle in m for m in messages) or time.time() >= deadline:
            return messages
        time.sleep(0.2)


@pytest.mark.parametrize("pacs", sorted(PACS))
def test_orthanc_runs_without_logdir_and_logs_under_its_identifier(pacs):
    h = host(pacs)
    pid = h.check_output("systemctl show -p MainPID --value orthanc")
    assert pid != "0"
    argv = h.check_output(f"tr '\\0' '\\n' < /proc/{pid}/cmdline").splitlines()
    assert not [a for a in argv if a.startswith("--logdir")], argv
    assert h.check_output("systemctl show -p SyslogIdentifier --value orthanc") == "orthanc"
    # The running process's own start-up line is there, under the identifier.
    started = h.check_output(f"journalctl --quiet --no-pager --identifier=orthanc _PID={pid} --output=cat")
    assert "Orthanc has started" in started, started


def refused_into_the_journal(client, calling_ae, address):
    """Associate from client as calling_ae, expect 1/1/3, and return the PACS's journal messages
    since, after checking that Orthanc's refusal line names calling_ae and address."""
    cursor = journal_cursor("pacs-id-pacs")
    res = associate(client, "pacs-id-pacs", calling_ae, expect_reason="calling-ae-not-recognized")
    assert reject(res) == CALLING_AE_NOT_RECOGNIZED, res
    line = f"Rejected association for remote AET {calling_ae} on IP {address}"
    messages = journaled("pacs-id-pacs", cursor, line)
    assert [m for m in messages if m.endswith(line)], messages
    return messages


def test_unknown_calling_ae_refusal_is_in_the_journal_with_the_callers_ae_and_address():
    refused_into_the_journal("pacs-id-unknown", UNKNOWN_AET, UNKNOWN_ADDRESS)


def test_registered_ae_from_another_address_is_in_the_journal_with_the_impostors_address():
    messages = refused_into_the_journal("pacs-id-impostor", MODALITY_AET, IMPOSTOR_ADDRESS)
    # Orthanc says why: the AE title is registered for another address.
    assert [m for m in messages if f'AET "{MODALITY_AET}" given its hostname ({IMPOSTOR_ADDRESS}) does not match' in m], \
        messages


def test_wrong_called_ae_refusal_is_in_the_journal_without_the_caller():
    # Orthanc names only the called AE here: the journal check cannot tie this line to a
    # source, and verify.yml looks up the calling-AE refusal instead.
    cursor = journal_cursor("pacs-id-pacs")
    res = associate("pacs-id-modality", "pacs-id-pacs", MODALITY_AET, called="NOTTHEPACS",
                    expect_reason="called-ae-not-recognized")
    assert reject(res) == CALLED_AE_NOT_RECOGNIZED, res
    line = "Rejected association, because of a bad called AET in the request (NOTTHEPACS)"
    messages = journaled("pacs-id-pacs", cursor, line)
    assert [m for m in messages if m.endswith(line)], messages
    assert not [m for m in messages if MODALITY_ADDRESS in m], messages


def test_accepted_association_leaves_no_refusal_in_the_journal():
    cursor = journal_cursor("pacs-id-pacs")
    res = associate("pacs-id-modality", "pacs-id-pacs", MODALITY_AET, expect="accepted")
    assert res["outcome"] == "accepted", res
    # A refusal after it proves Orthanc's log was reaching the journal all along.
    associate("pacs-id-unknown", "pacs-id-pacs", UNKNOWN_AET, expect="rejected")
    messages = journaled("pacs-id-pacs", cursor, f"for remote AET {UNKNOWN_AET} on IP {UNKNOWN_ADDRESS}")
    assert [m for m in messages if m.endswith(f"on IP {UNKNOWN_ADDRESS}")], messages
    assert not [m for m in messages if MODALITY_ADDRESS in m or MODALITY_AET in m], messages


# --- Per-modality services from the inventory -------------------------------------------

def test_modality_allowed_to_store_can_store():
    res = associate("pacs-id-modality", "pacs-id-pacs", MODALITY_AET, dimse="store", expect="accepted")
    assert res["operation"]["name"] == "C-STORE", res
    assert res["operation"]["succeeded"] and res["operation"]["status"] == 0, res


def test_modality_allowed_only_to_echo_cannot_store():
    # Orthanc accepts the association of a registered AE, then refuses the
    # request it may not make: not an association reject.
    res = associate("pacs-id-unknown", "pacs-id-pacs", VIEWER_AET, dimse="store", expect="operation_refused")
    assert res["outcome"] == "accepted", res
    assert res["operation"]["name"] == "C-STORE" and not res["operation"]["succeeded"], res


def test_modality_allowed_only_to_echo_can_echo():
    res = associate("pacs-id-unknown", "pacs-id-pacs", VIEWER_AET, expect="accepted")
    assert res["operation"]["status"] == 0, res


def test_modality_allowed_to_find_can_query():
    res = associate("pacs-id-modality", "pacs-id-pacs", MODALITY_AET, dimse="find", expect="accepted")
    assert res["operation"]["name"] == "C-FIND" and res["operation"]["succeeded"], res


def test_modality_allowed_only_to_echo_cannot_query():
    res = associate("pacs-id-unknown", "pacs-id-pacs", VIEWER_AET, dimse="find", expect="operation_refused")
    assert res["operation"]["name"] == "C-FIND" and not res["operation"]["succeeded"], res


# --- DICOM TLS with client certificates ----------------------------------------------------

def test_tls_association_with_a_trusted_client_certificate_is_accepted():
    res = associate("pacs-id-modality", "pacs-id-tls", MODALITY_AET, tls=TRUSTED_CERT, expect="accepted")
    assert res["tls"] and res["tls"]["version"].startswith("TLSv1."), res
    assert res["operation"]["status"] == 0, res


def test_plaintext_association_to_the_tls_pacs_is_refused():
    res = associate("pacs-id-modality", "pacs-id-tls", MODALITY_AET, expect="denied")
    # The TLS port never answers a plaintext A-ASSOCIATE-RQ with DICOM.
    assert res["outcome"] == "aborted", res
    assert res["reject"] is None and res["operation"] is None, res


# A TLS 1.3 server checks the client certificate after the handshake: its alert
# and the reset that follows race, and the module reports whichever it met first
# (a reset after a certificate request that got none is named as such).
CERTIFICATE_REFUSED = ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE", "UNKNOWN_CA", "BAD_CERTIFICATE",
                       "refused the client certificate", "asked for a client certificate")


def test_tls_without_a_client_certificate_is_refused_at_the_tls_layer():
    res = associate("pacs-id-modality", "pacs-id-tls", MODALITY_AET, tls={}, expect="denied")
    assert res["outcome"] == "tls_failed", res
    assert any(word in res["detail"] for word in CERTIFICATE_REFUSED), res
    assert res["reject"] is None and res["operation"] is None, res


def test_tls_with_a_client_certificate_from_an_untrusted_ca_is_refused():
    res = associate("pacs-id-modality", "pacs-id-tls", MODALITY_AET, tls=ROGUE_CERT, expect="denied")
    assert res["outcome"] == "tls_failed", res
    assert any(word in res["detail"] for word in CERTIFICATE_REFUSED), res
    assert res["reject"] is None and res["operation"] is None, res


def test_tls_pacs_still_rejects_an_unknown_calling_ae_with_a_trusted_certificate():
    # A valid certificate opens the TLS session, not the AE whitelist.
    res = associate("pacs-id-modality", "pacs-id-tls", UNKNOWN_AET, tls=TRUSTED_CERT,
                    expect_reason="calling-ae-not-recognized")
    assert res["tls"] is not None, res
    assert reject(res) == CALLING_AE_NOT_RECOGNIZED, res


# --- Pinning to the identity gateway ------------------------------------------------------

def test_pinned_pacs_accepts_the_registered_ae_through_the_gateway():
    res = associate("pacs-id-gateway", "pacs-id-pinned", MODALITY_AET, expect="accepted")
    assert res["operation"]["status"] == 0, res


def test_pinned_pacs_refuses_the_modality_connecting_directly():
    # The modality's own address is registered on the other PACS, and the host's
    # own whitelist lets it reach this port; only the pins refuse it, so identity
    # checks at the gateway cannot be walked around.
    res = associate("pacs-id-modality", "pacs-id-pinned", MODALITY_AET, expect="denied")
    assert res["outcome"] == "refused", res  # a TCP reset, before any DICOM


def test_pinned_pacs_refuses_the_modality_over_ipv6_too():
    res = associate("pacs-id-modality", "pacs-id-pinned", MODALITY_AET, address=PACS_V6["pacs-id-pinned"],
                    expect="denied")
    assert res["outcome"] == "refused", res


def test_pinned_pacs_refuses_even_the_gateway_over_the_family_it_is_not_pinned_to():
    # Only the gateway's IPv4 address is pinned: its IPv6 address is anyone's.
    res = associate("pacs-id-gateway", "pacs-id-pinned", MODALITY_AET, address=PACS_V6["pacs-id-pinned"],
                    expect="denied")
    assert res["outcome"] == "refused", res


def test_pinned_pacs_rejects_an_unknown_ae_even_through_the_gateway():
    res = associate("pacs-id-gateway", "pacs-id-pinned", UNKNOWN_AET, expect_reason="calling-ae-not-recognized")
    assert reject(res) == CALLING_AE_NOT_RECOGNIZED, res


def refuse_counter(table, service):
    out = host("pacs-id-pinned").check_output(f"nft list chain inet {table} refuse_{service}")
    return int(re.search(r"counter packets (\d+)", out).group(1))


def test_it_is_the_pins_that_refuse_the_modality_not_the_hosts_whitelist():
    before_pins, before_host = refuse_counter(PINS_TABLE, "pacs_dicom"), refuse_counter("dicomsec", "dicom")
    res = associate("pacs-id-modality", "pacs-id-pinned", MODALITY_AET, expect="denied")
    assert res["outcome"] == "refused", res
    assert refuse_counter(PINS_TABLE, "pacs_dicom") > before_pins
    assert refuse_counter("dicomsec", "dicom") == before_host


def test_the_hosts_whitelist_still_refuses_what_it_does_not_list():
    # The unknown modality is on neither list: the host's own table refuses it too.
    before_host = refuse_counter("dicomsec", "dicom")
    res = associate("pacs-id-unknown", "pacs-id-pinned", UNKNOWN_AET, expect="denied")
    assert res["outcome"] == "refused", res
    assert refuse_counter("dicomsec", "dicom") > before_host


def log_size():
    log = host("pacs-id-pinned").file(LOG_FILE)
    return len(log.content_string) if log.exists else 0


def test_a_refused_direct_connection_is_logged_through_the_hosts_log_settings():
    # The pins inherit the host's nftables_whitelist_log_* (nflog, ulogd2's file):
    # one logging path for every table. Logging is rate-limited (10/minute, burst
    # 5): earlier tests may have used the burst, a token comes back every 6 s.
    since = log_size()
    deadline = time.time() + 20
    lines = []
    while not lines and time.time() < deadline:
        associate("pacs-id-modality", "pacs-id-pinned", MODALITY_AET, expect="denied")
        time.sleep(1)
        text = host("pacs-id-pinned").file(LOG_FILE).content_string[since:]
        lines = [ln for ln in text.splitlines() if f"SRC={MODALITY_ADDRESS} " in ln and f"DPT={PORT} " in ln]
    assert lines, "no log line for the refused modality"
    assert "dicomsec-refused pacs_dicom:" in lines[-1]


# --- One firewall mechanism on the pinned PACS --------------------------------------------

def test_the_pins_are_an_nftables_whitelist_table_beside_the_hosts_own():
    pinned = host("pacs-id-pinned")
    pins = pinned.check_output(f"nft --terse list table inet {PINS_TABLE}")
    assert 'comment "dicomsec:' in pins  # the role's digest: loaded by nftables_whitelist
    assert "chain svc_pacs_dicom" in pins and "chain svc_pacs_rest" in pins
    # Policy accept and no management rule: the pins never touch management traffic.
    assert "policy accept" in pins and "mgmt_v4" not in pins
    assert 'comment "dicomsec:' in pinned.check_output("nft --terse list table inet dicomsec")
    for unit in (PINS_UNIT, "dicomsec-nftables@dicomsec.service"):
        assert pinned.run(f"systemctl is-enabled {unit}").stdout.strip() == "enabled", unit
    # Orthanc never runs without its pins.
    assert PINS_UNIT in pinned.check_output("systemctl show -p Requires --value orthanc").split()


def test_the_earlier_pins_were_migrated_away():
    pinned = host("pacs-id-pinned")
    assert "table inet pacs_identity\n" not in pinned.check_output("nft list tables inet") + "\n"
    assert not pinned.file("/etc/systemd/system/pacs-identity-firewall.service").exists
    assert not pinned.file("/etc/nftables.d/pacs-identity.nft").exists
    assert "pacs-identity-firewall" not in pinned.check_output("systemctl show -p Requires --value orthanc")


def test_the_rules_directory_has_the_one_mode_both_roles_agree_on():
    # Two roles used to set it to 0755 and 0750 in turn, each run.
    assert host("pacs-id-pinned").file("/etc/nftables.d").mode == 0o750


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
    # Orthanc 1.10 binds every address; the pins reset the rest.
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


# --- Migration, watched from the modality's position ---------------------------------------
# Last but one: these tests converge the pinned PACS again.

# Runs on the modality: TCP connection attempts to the pinned PACS's pinned ports
# as fast as it can, until told to stop; counts what a firewall window would let
# through (a completed handshake) next to the resets. Not DICOM: a handshake is
# all a window needs, and a DICOM association per attempt would be far too slow.
WATCHER = r'''
import json, os, socket, sys, time
targets = json.loads(sys.argv[1]); stop, out = sys.argv[2], sys.argv[3]
counts = {"attempts": 0, "open": 0, "refused": 0, "other": 0}
opened_at = []
start = time.time()
while not os.path.exists(stop) and time.time() - start < 600:
    for addr, port in targets:
        s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
        s.settimeout(0.5)
        try:
            s.connect((addr, port))
            counts["open"] += 1
            opened_at.append([addr, port, round(time.time() - start, 3)])
        except ConnectionRefusedError:
            counts["refused"] += 1
        except OSError:
            counts["other"] += 1
        finally:
            s.close()
        counts["attempts"] += 1
    if counts["attempts"] % 50 == 0:
        with open(out + ".alive", "w") as f:
            f.write(str(counts["attempts"]))
    time.sleep(0.005)
counts["opened_at"] = opened_at[:20]
with open(out, "w") as f:
    json.dump(counts, f)
'''


class Watcher:
    def __init__(self, name, targets):
        self.name, self.targets = name, targets
        self.stop, self.out = "/tmp/watch.stop", "/tmp/watch.json"

    def __enter__(self):
        host(self.name).run(f"rm -f {self.stop} {self.out} {self.out}.alive")
        subprocess.run(["docker", "exec", "-d", self.name, "python3", "-c", WATCHER, json.dumps(self.targets),
                        self.stop, self.out], check=True, timeout=30)
        deadline = time.time() + 20
        while not host(self.name).file(self.out + ".alive").exists:
            assert time.time() < deadline, "the watcher never started"
            time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        h = host(self.name)
        h.run(f"touch {self.stop}")
        deadline = time.time() + 20
        while not h.file(self.out).exists and time.time() < deadline:
            time.sleep(0.2)
        self.result = json.loads(h.file(self.out).content_string)


def run_playbook(playbook, *flags):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "ansible.cfg"))
    proc = subprocess.run(["ansible-playbook", "-i", INVENTORY, str(SCENARIO_DIR / playbook), *flags],
                          capture_output=True, text=True, timeout=600, check=False, env=env, cwd=SCENARIO_DIR)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc.stdout


def changed(out, name):
    recap = re.sub(r"\x1b\[[0-9;]*m", "", out)  # molecule asks for colour
    return int(re.search(rf"^{re.escape(name)}\s*:\s*ok=\d+\s+changed=(\d+)", recap, re.M).group(1))


def test_the_watcher_sees_an_open_port():
    # The twin of the test below: the same watcher, on the PACS that is not pinned,
    # where the modality's connections complete. A window would not go unseen.
    with Watcher("pacs-id-modality", [[PACS["pacs-id-pacs"], PORT]]) as watch:
        time.sleep(1)
    assert watch.result["open"] > 0, watch.result


def test_migrating_earlier_pins_never_leaves_the_pacs_unpinned():
    # The pinned PACS as the earlier version left it: its table and unit, and
    # Orthanc's drop-in requiring that unit; none of this version's pins.
    run_playbook("legacy.yml")
    pinned = host("pacs-id-pinned")
    assert "table inet pacs_identity" in pinned.check_output("nft list tables inet").splitlines()
    assert f"table inet {PINS_TABLE}" not in pinned.check_output("nft list tables inet").splitlines()
    targets = [[PACS["pacs-id-pinned"], PORT], [PACS_V6["pacs-id-pinned"], PORT],
               [PACS_V6["pacs-id-pinned"], REST_PORT]]
    with Watcher("pacs-id-modality", targets) as watch:
        out = run_playbook("converge.yml", "--limit", "pacs-id-pinned")
    assert changed(out, "pacs-id-pinned") > 0  # it did migrate something
    result = watch.result
    assert result["attempts"] >= 100, result
    assert result["open"] == 0, result
    assert result["refused"] >= 0.9 * result["attempts"], result  # resets, not an unreachable host
    assert "table inet pacs_identity" not in pinned.check_output("nft list tables inet").splitlines()
    assert not pinned.file("/etc/systemd/system/pacs-identity-firewall.service").exists
    assert pinned.run("systemctl is-active orthanc").stdout.strip() == "active"
    # And the migrated host converges to nothing more.
    assert changed(run_playbook("converge.yml", "--limit", "pacs-id-pinned"), "pacs-id-pinned") == 0


# Last: the restart drops what the scenario set up by hand.
def test_pins_come_back_at_boot_before_orthanc():
    subprocess.run(["docker", "restart", "pacs-id-pinned"], check=True, capture_output=True, timeout=120)
    pinned = host("pacs-id-pinned")
    deadline = time.time() + 90
    while pinned.run("systemctl is-system-running").stdout.strip() not in ("running", "degraded"):
        assert time.time() < deadline, pinned.run("systemctl --failed --no-legend").stdout
        time.sleep(0.5)
    assert pinned.run(f"systemctl is-active {PINS_UNIT}").stdout.strip() == "active"
    assert f"table inet {PINS_TABLE}" in pinned.check_output("nft list tables inet").splitlines()
    deadline = time.time() + 60
    while pinned.run(f"ss -Htln 'sport = :{PORT}'").stdout.strip() == "" and time.time() < deadline:
        time.sleep(0.5)
    associate("pacs-id-gateway", "pacs-id-pinned", MODALITY_AET, expect="accepted")
    assert associate("pacs-id-modality", "pacs-id-pinned", MODALITY_AET, expect="denied")["outcome"] == "refused"
