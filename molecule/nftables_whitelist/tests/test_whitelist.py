"""The whitelist, proven from the hosts that matter: allowed, denied, operator.

wl-allowed (198.18.10.31) is on the DICOM whitelist; wl-denied (198.18.10.32)
sits on the same LAN and is not; wl-admin is on the management network. DICOM
is spoken with the collection's own dicomsec.hardening.dicom_association
module, run on the client that matters; bare TCP (management port, rate and
connection limits) with a few lines of Python, since no DICOM is involved.
"""

import base64
import json
import os
import re
import shlex
import subprocess
import time

import pytest
import testinfra
import yaml

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO = os.environ["MOLECULE_SCENARIO_DIRECTORY"]

SERVER_V4, SERVER_V6 = "198.18.10.30", "2001:db8:d1c0:10::30"
SERVER_MGMT_V4, SERVER_MGMT_V6 = "198.18.40.30", "2001:db8:d1c0:40::30"
SERVER_TUNNEL = "198.18.99.1"  # the server's inner address, reachable only through IPsec
# The converge's other whitelists, read from converge.yml itself: an override of
# modalities keeps them, so that the services that name them stay valid and only the
# change under test differs.
with open(os.path.join(SCENARIO, "converge.yml"), encoding="utf-8") as _converge:
    OTHER_SETS = {
        name: entries
        for name, entries in yaml.safe_load(_converge)[0]["vars"]["nftables_whitelist_source_sets"].items()
        if name != "modalities"
    }
LOG_FILE = "/var/log/ulog/dicomsec-refused.log"

# Runs on a client: bare TCP, where no DICOM is involved (one connection attempt,
# a burst for the rate limit, held connections for the connection limit).
PROBE = r'''
import socket, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "tcp":
    try:
        socket.create_connection((host, port), timeout=2).close()
        print("open")
    except ConnectionRefusedError:
        print("refused")
    except (socket.timeout, TimeoutError):
        print("timeout")
elif mode == "burst":
    # Opens `count` connections as fast as possible, closing each.
    count, opened, refused = int(sys.argv[4]), 0, 0
    for _ in range(count):
        try:
            socket.create_connection((host, port), timeout=2).close()
            opened += 1
        except ConnectionRefusedError:
            refused += 1
    print(opened, refused)
elif mode == "hold":
    # Holds `count` connections open at once, a little apart so the rate limit stays out of it.
    count, held, refused = int(sys.argv[4]), [], 0
    for _ in range(count):
        try:
            held.append(socket.create_connection((host, port), timeout=2))
        except ConnectionRefusedError:
            refused += 1
        time.sleep(0.3)
    print(len(held), refused)
'''
PROBE_B64 = base64.b64encode(PROBE.encode()).decode()


def host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def probe(name, *args):
    cmd = f"echo {PROBE_B64} | base64 -d > /tmp/probe.py && python3 /tmp/probe.py " + " ".join(map(str, args))
    return host(name).check_output(cmd).strip()


def dicom(name, addr, port, expect="any"):
    """One C-ECHO association from lab host `name` with dicom_association; its result.

    With `expect` other than any, the module asserts the outcome itself and the
    call raises if the server (or the firewall) answered otherwise.
    """
    args = {"host": addr, "port": port, "called_ae": "LABSCP", "calling_ae": "MODALITY", "timeout": 3,
            "expect": expect}
    return host(name).ansible("dicomsec.hardening.dicom_association", json.dumps(args), check=False)


def echo_accepted(name, addr, port):
    res = dicom(name, addr, port, expect="accepted")
    return res["outcome"] == "accepted" and res["operation"]["status"] == 0


def log_size(name):
    log = host(name).file(LOG_FILE)
    return len(log.content_string) if log.exists else 0


def refused_and_logged(client, args, server, src, timeout=20):
    """Probe from `client` until `server`'s refused-packet log has a new line about `src`;
    return the probe's last answer and the new lines.

    Logging is rate-limited (10/minute, burst 5), and earlier tests may have used up
    the burst: a token comes back every 6 seconds, so the probe is repeated until one
    is logged. Only lines written during this call count.
    """
    since = log_size(server)
    log = host(server).file(LOG_FILE)
    deadline = time.time() + timeout
    while True:
        answer = probe(client, *args)
        wait_until = min(time.time() + 2, deadline)
        while True:
            lines = [ln for ln in log.content_string[since:].splitlines() if f"SRC={src} " in ln]
            if lines or time.time() >= wait_until:
                break
            time.sleep(0.2)
        if lines or time.time() >= deadline:
            return answer, lines


def journal_cursor(name):
    """The cursor of the newest entry in `name`'s journal: entries after it are new."""
    return json.loads(host(name).check_output("journalctl --quiet --no-pager --output=json --lines=1"))["__CURSOR"]


def journal_refusals(name, cursor, src):
    """`name`'s journal entries under the identifier ulogd, after `cursor`, about `src`."""
    out = host(name).check_output(
        f"journalctl --quiet --no-pager --output=json --identifier=ulogd --after-cursor={shlex.quote(cursor)}")
    entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [e for e in entries if f"SRC={src} " in str(e.get("MESSAGE", ""))]


def refused_and_journaled(client, args, server, src, timeout=20):
    """Probe from `client` until `server`'s journal has a new ulogd entry about `src`;
    return the probe's last answer and the new entries (rate-limited, as refused_and_logged)."""
    cursor = journal_cursor(server)
    deadline = time.time() + timeout
    while True:
        answer = probe(client, *args)
        wait_until = min(time.time() + 2, deadline)
        while True:
            entries = journal_refusals(server, cursor, src)
            if entries or time.time() >= wait_until:
                break
            time.sleep(0.2)
        if entries or time.time() >= deadline:
            return answer, entries


def live_digest():
    out = host("wl-server").check_output("nft --terse list table inet dicomsec")
    return next(line.split('"')[1] for line in out.splitlines() if "comment" in line)


def with_modalities(entries, **extra):
    """Extra vars that replace the modalities whitelist and keep the others."""
    return dict({"nftables_whitelist_source_sets": dict(OTHER_SETS, modalities=entries)}, **extra)


def run_converge(extra_vars, *flags):
    """Run the scenario's converge again on the server, with some variables changed."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "ansible.cfg"))
    return subprocess.run(
        ["ansible-playbook", "-i", INVENTORY, os.path.join(SCENARIO, "converge.yml"),
         "--limit", "wl-server", "-e", json.dumps(extra_vars), *flags],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )


@pytest.mark.parametrize("addr", [SERVER_V4, SERVER_V6])
@pytest.mark.parametrize("port", [104, 11112])
def test_allowed_modality_completes_a_dicom_echo(addr, port):
    assert echo_accepted("wl-allowed", addr, port)


@pytest.mark.parametrize("addr", [SERVER_V4, SERVER_V6])
@pytest.mark.parametrize("port", [104, 11112])
def test_denied_host_is_rejected_with_a_reset(addr, port):
    # refused_action is reject: the client gets a TCP reset, not a silent drop.
    assert probe("wl-denied", "tcp", addr, port) == "refused"
    # The module sees the same reset: the association never starts.
    assert dicom("wl-denied", addr, port, expect="denied")["outcome"] == "refused"


def test_refused_attempt_is_logged_with_the_prefix():
    answer, lines = refused_and_logged("wl-denied", ("tcp", SERVER_V4, 104), "wl-server", "198.18.10.32")
    assert answer == "refused"
    assert lines
    assert "dicomsec-refused dicom:" in lines[-1]
    assert "DPT=104 " in lines[-1]


def test_accepted_connections_are_not_logged():
    probe("wl-allowed", "tcp", SERVER_V4, 104)
    log = host("wl-server").file(LOG_FILE).content_string
    # (The IPsec tests below refuse this modality on 4243 in the clear: only port 104 counts.)
    assert not [ln for ln in log.splitlines() if "SRC=198.18.10.31 " in ln and "DPT=104 " in ln]


def test_refused_packet_is_in_the_journal_under_ulogd_with_the_prefix_and_source_address():
    # The nflog backend: ulogd2 writes each refused packet to its file and, through its
    # SYSLOG output, to the journal, where verify.yml's journal check reads it.
    answer, entries = refused_and_journaled("wl-denied", ("tcp", SERVER_V4, 104), "wl-server", "198.18.10.32")
    assert answer == "refused"
    assert entries, "no journal entry under the identifier ulogd for the refused host"
    entry = entries[-1]
    assert entry["SYSLOG_IDENTIFIER"] == "ulogd"
    assert entry["MESSAGE"].startswith("dicomsec-refused dicom: "), entry["MESSAGE"]
    assert "DPT=104 " in entry["MESSAGE"]
    # The role's defaults: LOG_DAEMON (3), LOG_WARNING (4), the kernel backend's level.
    assert (entry["SYSLOG_FACILITY"], entry["PRIORITY"]) == ("3", "4"), entry
    # The same packet is in the file too: the journal copy is beside it, not instead of it.
    port = re.search(r" SPT=(\d+) ", entry["MESSAGE"]).group(1)
    log = host("wl-server").file(LOG_FILE).content_string
    assert [ln for ln in log.splitlines() if "SRC=198.18.10.32 " in ln and f" SPT={port} " in ln]


def test_accepted_connection_leaves_no_refusal_in_the_journal():
    cursor = journal_cursor("wl-server")
    assert probe("wl-allowed", "tcp", SERVER_V4, 104) == "open"
    # A refusal made after it proves the journal copy was flowing all along.
    answer, entries = refused_and_journaled("wl-denied", ("tcp", SERVER_V4, 104), "wl-server", "198.18.10.32")
    assert answer == "refused" and entries
    assert not [e for e in journal_refusals("wl-server", cursor, "198.18.10.31") if "DPT=104 " in e["MESSAGE"]]


@pytest.mark.parametrize("addr", [SERVER_MGMT_V4, SERVER_MGMT_V6])
def test_management_port_is_reachable_from_the_management_network(addr):
    assert probe("wl-admin", "tcp", addr, 22) == "open"


@pytest.mark.parametrize("addr", [SERVER_V4, SERVER_V6])
def test_management_port_is_closed_to_other_hosts(addr):
    # Unprotected traffic meets input policy drop: no answer at all.
    assert probe("wl-denied", "tcp", addr, 22) == "timeout"
    assert probe("wl-allowed", "tcp", addr, 22) == "timeout"


def test_tables_made_before_the_run_are_untouched():
    out = host("wl-server").check_output("nft list table inet admin_keep")
    assert 'tcp dport 9999 counter' in out
    assert 'comment "admin rule"' in out


def limit_refusals(set_name):
    out = host("wl-server").check_output("nft list chain inet dicomsec allow_dicom")
    line = next(ln for ln in out.splitlines() if f"@{set_name}" in ln)
    return int(line.split("packets ")[1].split()[0])


def test_rate_limit_refuses_a_burst_beyond_its_limit():
    time.sleep(2)  # let the per-source bucket refill after earlier tests
    rate_before, conn_before = limit_refusals("rate_dicom_v4"), limit_refusals("conn_dicom_v4")
    opened, refused = map(int, probe("wl-allowed", "burst", SERVER_V4, 104, 40).split())
    # 5/second with a burst of 5: a sub-second burst of 40 mostly bounces.
    assert opened >= 1, (opened, refused)
    assert refused >= 20, (opened, refused)
    # Every refusal came from the allowed source's limits, most from the rate limit.
    rate = limit_refusals("rate_dicom_v4") - rate_before
    conn = limit_refusals("conn_dicom_v4") - conn_before
    assert rate + conn == refused, (rate, conn, refused)
    assert rate >= 20, (rate, conn, refused)


def test_connection_limit_refuses_connections_beyond_the_limit():
    time.sleep(2)
    held, refused = map(int, probe("wl-allowed", "hold", SERVER_V4, 104, 6).split())
    assert (held, refused) == (4, 2)


def test_a_broken_variable_fails_before_any_change():
    before = live_digest()
    result = run_converge(with_modalities(["198.18.10.300"]))
    assert result.returncode != 0
    assert "Check each protected service" not in result.stdout, result.stdout[-3000:]
    output = result.stdout + result.stderr
    assert "nftables_whitelist_source_sets.modalities" in output
    assert "198.18.10.300" in output
    assert live_digest() == before
    assert echo_accepted("wl-allowed", SERVER_V4, 104)


def test_check_mode_shows_the_change_without_applying_it():
    before = live_digest()
    widened = with_modalities(["198.18.10.31", "198.18.10.32", "2001:db8:d1c0:10::31"])
    result = run_converge(widened, "--check", "--diff")
    assert result.returncode == 0, result.stdout[-3000:]
    # The new entry shows as an added line of its own in the set's elements block
    # (the output is coloured: the escape codes go first).
    diff = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout).replace("\\t", "\t")
    assert re.search(r"^\+\t\t\t198\.18\.10\.32,?$", diff, re.M), diff[-3000:]
    assert live_digest() == before
    assert probe("wl-denied", "tcp", SERVER_V4, 104) == "refused"


def test_a_change_the_controller_cannot_confirm_is_rolled_back():
    before = live_digest()
    # A real change, confirmed against a port nothing listens on: the check fails.
    widened = with_modalities(["198.18.10.31", "198.18.10.32", "2001:db8:d1c0:10::31"],
                              nftables_whitelist_confirm_port=9)
    result = run_converge(widened)
    assert result.returncode != 0
    assert "previous table was restored" in result.stdout + result.stderr
    assert live_digest() == before
    # The file the next boot loads is the previous one too.
    assert f'comment "{before}"' in host("wl-server").file("/etc/nftables.d/dicomsec.nft").content_string
    assert probe("wl-denied", "tcp", SERVER_V4, 104) == "refused"
    assert host("wl-server").run("systemctl is-active dicomsec-nftables-rollback-dicomsec.timer").stdout.strip() != "active"


# Segmentation: the gateway's forward chain decides which remote sites reach
# the DICOM LAN. wl-remote-ok is on its whitelist (and on the server's);
# wl-remote-bad is on neither, so the gateway must stop it before the server
# ever sees a packet.

@pytest.mark.parametrize("addr", [SERVER_V4, SERVER_V6])
def test_whitelisted_remote_site_reaches_the_pacs_through_the_gateway(addr):
    assert echo_accepted("wl-remote-ok", addr, 104)


@pytest.mark.parametrize("addr", [SERVER_V4, SERVER_V6])
def test_other_remote_site_is_refused_at_the_gateway(addr):
    gateway = host("wl-gateway")
    before = gateway.check_output("nft list chain inet dicomsec refuse_dicom_segment")
    assert probe("wl-remote-bad", "tcp", addr, 104) == "refused"
    after = gateway.check_output("nft list chain inet dicomsec refuse_dicom_segment")
    assert before != after  # the gateway's refuse counter moved: it, not the server, said no
    assert "SRC=198.18.20.35 " not in host("wl-server").file(LOG_FILE).content_string


def test_gateway_logs_the_refused_remote_site():
    answer, lines = refused_and_logged("wl-remote-bad", ("tcp", SERVER_V4, 11112), "wl-gateway", "198.18.20.35")
    assert answer == "refused"
    assert lines
    assert "dicomsec-refused dicom_segment:" in lines[-1]


def test_gateway_writes_the_refused_remote_site_to_its_journal():
    answer, entries = refused_and_journaled("wl-remote-bad", ("tcp", SERVER_V4, 11112), "wl-gateway", "198.18.20.35")
    assert answer == "refused"
    assert entries, "no journal entry under the identifier ulogd on the gateway"
    assert entries[-1]["MESSAGE"].startswith("dicomsec-refused dicom_segment: "), entries[-1]["MESSAGE"]


def test_gateway_journal_holds_no_refusal_of_the_whitelisted_remote_site():
    cursor = journal_cursor("wl-gateway")
    assert echo_accepted("wl-remote-ok", SERVER_V4, 11112)
    answer, entries = refused_and_journaled("wl-remote-bad", ("tcp", SERVER_V4, 11112), "wl-gateway", "198.18.20.35")
    assert answer == "refused" and entries
    assert not journal_refusals("wl-gateway", cursor, "198.18.20.34")


# Interfaces: 4242 is reachable only through the LAN interface. wl-admin is on its
# whitelist too, but arrives over the management interface.

@pytest.mark.parametrize("addr", [SERVER_V4, SERVER_V6])
def test_interface_bound_service_is_reached_over_its_interface(addr):
    assert echo_accepted("wl-allowed", addr, 4242)


@pytest.mark.parametrize("addr", [SERVER_MGMT_V4, SERVER_MGMT_V6])
def test_interface_bound_service_refuses_a_whitelisted_source_on_another_interface(addr):
    assert probe("wl-admin", "tcp", addr, 4242) == "refused"
    assert probe("wl-admin", "tcp", addr, 22) == "open"  # the path itself is open


# IPsec: 4243 is reachable only through the tunnel prepare brought up (strongSwan,
# userspace ESP, so decrypted packets arrive on ipsec0). The modality is whitelisted
# both inside the tunnel and in the clear: only the path decides.

def esp_packets_in():
    out = host("wl-server").check_output("swanctl --list-sas --raw")
    return sum(int(n) for n in re.findall(r"packets-in=(\d+)", out))


def test_ipsec_only_service_is_reached_through_the_tunnel():
    server = host("wl-server")
    # The path under test is the userspace one: ESP decrypted by charon, delivered on
    # ipsec0, with no kernel SA that `meta ipsec exists` could match instead.
    assert server.run("ip link show ipsec0").rc == 0
    assert server.check_output("ip xfrm state") == ""
    before = esp_packets_in()
    assert echo_accepted("wl-allowed", SERVER_TUNNEL, 4243)
    assert esp_packets_in() > before  # the association travelled inside ESP


def test_ipsec_only_service_refuses_the_same_modality_in_the_clear():
    answer, lines = refused_and_logged("wl-allowed", ("tcp", SERVER_V4, 4243), "wl-server", "198.18.10.31")
    assert answer == "refused"
    assert any("dicomsec-refused dicom_ipsec:" in ln and "DPT=4243 " in ln for ln in lines)
    # The same source, in the clear, on a service that does not ask for IPsec:
    assert echo_accepted("wl-allowed", SERVER_V4, 104)


# Destinations on the input chain: 4244 answers on the server's IPv4 LAN address
# only. The modality and the operator are both on its whitelist; on the server's
# other addresses they are refused.

def test_service_answers_on_its_destination_address():
    assert echo_accepted("wl-allowed", SERVER_V4, 4244)


@pytest.mark.parametrize(("client", "addr"), [("wl-allowed", SERVER_V6), ("wl-admin", SERVER_MGMT_V4),
                                              ("wl-admin", SERVER_MGMT_V6)])
def test_service_refuses_a_whitelisted_source_on_another_address_of_the_host(client, addr):
    assert dicom(client, addr, 4244, expect="denied")["outcome"] == "refused"
    assert probe("wl-admin", "tcp", SERVER_MGMT_V4, 22) == "open"  # the operator's path itself is open


# Persistence: one template unit, one instance per table. The single unit of
# earlier versions, which prepare left enabled, is gone.

def test_the_table_loads_at_boot_through_its_own_unit_instance():
    server = host("wl-server")
    assert server.run("systemctl is-enabled dicomsec-nftables@dicomsec.service").stdout.strip() == "enabled"
    assert server.file("/etc/nftables.d").mode == 0o750
    assert server.file("/etc/nftables.d/dicomsec.nft").mode == 0o640


def test_the_unit_of_earlier_versions_was_retired():
    server = host("wl-server")
    assert not server.file("/etc/systemd/system/dicomsec-nftables.service").exists
    assert not server.file("/etc/systemd/system/sysinit.target.wants/dicomsec-nftables.service").exists


# Two tables from two invocations of the role on one host: the second narrows
# 11112 to the allowed modality; the remote site the server's own table lets in
# is refused there while the second table lives, and let in again once it is
# removed with nftables_whitelist_state=absent.

def run_playbook(playbook, *flags):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "ansible.cfg"))
    return subprocess.run(
        ["ansible-playbook", "-i", INVENTORY, os.path.join(SCENARIO, playbook), *flags],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )


def changed_on_server(result):
    recap = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)  # molecule asks for colour
    return int(re.search(r"^wl-server\s*:\s*ok=\d+\s+changed=(\d+)", recap, re.M).group(1))


def test_a_second_table_lives_beside_the_first_each_idempotent_and_goes_cleanly():
    server = host("wl-server")
    before = live_digest()
    first = run_playbook("extra_table.yml")
    assert first.returncode == 0, first.stdout[-3000:]
    assert changed_on_server(first) > 0
    again = run_playbook("extra_table.yml")
    assert again.returncode == 0 and changed_on_server(again) == 0, again.stdout[-3000:]
    assert live_digest() == before  # the first table untouched
    assert server.run("systemctl is-enabled dicomsec-nftables@extra.service").stdout.strip() == "enabled"
    assert echo_accepted("wl-allowed", SERVER_V4, 11112)
    assert dicom("wl-remote-ok", SERVER_V4, 11112, expect="denied")["outcome"] == "refused"
    assert echo_accepted("wl-remote-ok", SERVER_V4, 104)  # the first table still lets it in

    removed = run_playbook("extra_table.yml", "-e", "extra_table_state=absent")
    assert removed.returncode == 0, removed.stdout[-3000:]
    assert "table inet extra" not in server.check_output("nft list tables inet").splitlines()
    assert not server.file("/etc/nftables.d/extra.nft").exists
    assert server.run("systemctl is-enabled dicomsec-nftables@extra.service").stdout.strip() != "enabled"
    assert live_digest() == before
    assert echo_accepted("wl-remote-ok", SERVER_V4, 11112)
    again = run_playbook("extra_table.yml", "-e", "extra_table_state=absent")
    assert again.returncode == 0 and changed_on_server(again) == 0, again.stdout[-3000:]


# Last: the restart drops the lab routes that prepare added.
def test_whitelist_survives_a_reboot():
    before = live_digest()
    subprocess.run(["docker", "restart", "wl-server"], check=True, capture_output=True, timeout=120)
    server = host("wl-server")
    # Right after the restart systemd may not even answer yet: poll until it has booted.
    deadline = time.time() + 60
    while server.run("systemctl is-system-running").stdout.strip() not in ("running", "degraded"):
        assert time.time() < deadline, server.run("systemctl --failed --no-legend").stdout
        time.sleep(0.5)
    assert server.run("systemctl is-active dicomsec-nftables@dicomsec").stdout.strip() == "active"
    assert live_digest() == before
    # The lab SCP needs a moment after boot to import pynetdicom and listen.
    deadline = time.time() + 20
    while server.run("ss -Htln 'sport = :104'").stdout.strip() == "" and time.time() < deadline:
        time.sleep(0.5)
    assert echo_accepted("wl-allowed", SERVER_V4, 104)
    assert probe("wl-denied", "tcp", SERVER_V4, 104) == "refused"
