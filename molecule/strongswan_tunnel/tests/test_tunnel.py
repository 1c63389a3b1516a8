"""strongswan_tunnel, proven from the hosts that matter: the site's modality, an outsider on the WAN, the gateways.

The modality (site LAN) stores into the cloud PACS (Orthanc, pacs_identity) with the collection's
own dicomsec.hardening.dicom_association module, run on the modality, so the PACS and both
gateways see its true address. The WAN link is captured on the site gateway's WAN interface while
that happens. The outsider stands on the WAN with a route to the cloud network through the cloud
gateway. Every accepted case has its refused twin.
"""

import json
import os
import pathlib
import re
import subprocess
import time

import pytest
import testinfra
import yaml

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
EPHEMERAL = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
SCENARIO_DIR = pathlib.Path(__file__).parents[1]
S = yaml.safe_load((SCENARIO_DIR / "vars" / "scenario.yml").read_text())

TUNNEL = S["scenario_tunnel"]
PACS, PORT, REST_PORT = S["scenario_pacs"], S["scenario_dicom_port"], S["scenario_rest_port"]
SITE_GW_WAN, CLOUD_GW_WAN = S["scenario_site_gw_wan"], S["scenario_cloud_gw_wan"]
PSK_FILE = pathlib.Path(EPHEMERAL) / "credentials" / f"{TUNNEL}.psk"
SECRETS = f"/etc/swanctl/conf.d/dicomsec-{TUNNEL}.secrets.conf"
# dicom_association's C-STORE carries this patient name (its documentation says so).
PATIENT = b"DICOMSEC^PROBE"
RECOVERY_LIMIT = 60.0
RECOVERY_FILE = pathlib.Path(EPHEMERAL) / "recovery-times.txt"
GATEWAYS = ("st-site-gw", "st-cloud-gw")


def host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def associate(src, dimse="echo", expect="any", address=PACS, timeout=5):
    args = {"host": address, "port": PORT, "called_ae": S["scenario_pacs_aet"], "calling_ae": S["scenario_modality_aet"],
            "dimse": dimse, "expect": expect, "timeout": timeout}
    return host(src).ansible("dicomsec.hardening.dicom_association", json.dumps(args), check=False)


def store_accepted(src="st-modality"):
    res = associate(src, dimse="store")
    return res.get("outcome") == "accepted" and res.get("operation", {}).get("succeeded") is True


def tcp(src, address, port, timeout=3):
    code = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=%d).close(); print('open')\n"
            "except ConnectionRefusedError: print('refused')\nexcept OSError as e: print('timeout' if 'timed out' in str(e) else 'error')" % timeout)
    return host(src).check_output("python3 -c %s %s %s", code, address, str(port)).strip()


def cursor(name):
    """Where strongswan.service's journal ends now, to read only what comes after."""
    out = host(name).check_output("journalctl --unit strongswan --lines 0 --show-cursor --no-pager")
    return re.search(r"-- cursor: (\S+)", out).group(1)


def journal_since(name, mark):
    return host(name).check_output(f"journalctl --unit strongswan --after-cursor '{mark}' --no-pager --output cat")


def cursors():
    return {gw: cursor(gw) for gw in GATEWAYS}


def interface_of(name, address):
    out = host(name).check_output(f"ip -o -4 addr show to {address}")
    return out.split()[1]


class Capture:
    """tcpdump on one interface of a lab host, started in the background and stopped by its PID."""

    def __init__(self, name, address):
        self.host, self.iface = host(name), interface_of(name, address)
        self.path = f"/tmp/capture-{self.iface}-{time.monotonic_ns()}.pcap"

    def __enter__(self):
        # --immediate-mode: without it libpcap hands packets over in blocks, after up to a
        # second, and the packets of a block not yet handed over when tcpdump is stopped are
        # never written: a capture could end before the C-STORE it was made for.
        self.pid = self.host.check_output(
            f"nohup tcpdump -i {self.iface} --immediate-mode -U -s 0 -w {self.path} >/dev/null 2>&1 & echo $!").strip()
        # tcpdump opens its file once it listens.
        for _attempt in range(50):
            if self.host.file(self.path).exists:
                break
            time.sleep(0.1)
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)
        self.host.run(f"kill -INT {self.pid}")
        for _attempt in range(50):
            if not self.host.run(f"kill -0 {self.pid}").succeeded:
                break
            time.sleep(0.1)

    def packets(self):
        return self.host.check_output(f"tcpdump -nn -r {self.path} 2>/dev/null").splitlines()

    def raw(self):
        return subprocess.run(["docker", "exec", self.host.backend.host, "cat", self.path], capture_output=True,
                              check=True).stdout


def sa_bytes_out(name):
    out = host(name).check_output(f"swanctl --list-sas --ike {TUNNEL}")
    return sum(int(n) for n in re.findall(r"out [0-9a-f]+(?:_i)?\S*,\s+([0-9]+) bytes", out))


def wait_for(predicate, limit):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if predicate():
            return time.monotonic() - start
        time.sleep(1)
    return None


# --- through the tunnel --------------------------------------------------------------------


def test_modality_c_store_reaches_the_pacs_through_the_tunnel():
    before = sa_bytes_out("st-site-gw")
    res = associate("st-modality", dimse="store", expect="accepted")
    assert res["outcome"] == "accepted" and res["operation"]["succeeded"], res
    # The instance went out through the CHILD_SA, not some other way.
    assert sa_bytes_out("st-site-gw") > before


def test_wan_capture_during_a_c_store_holds_only_ike_and_esp_in_udp():
    with Capture("st-site-gw", SITE_GW_WAN) as wan:
        assert store_accepted()
    lines, raw = wan.packets(), wan.raw()
    ours = [ln for ln in lines if " IP " in ln]
    assert ours, lines
    outer = re.compile(r" IP (%s|%s)\.(500|4500) > (%s|%s)\.(500|4500): " % ((re.escape(SITE_GW_WAN), re.escape(CLOUD_GW_WAN)) * 2))
    assert [ln for ln in ours if not outer.search(ln)] == []
    # ESP in UDP, not bare IKE only: the instance itself crossed the link.
    assert any("UDP-encap" in ln or "ESP" in ln for ln in ours), ours
    assert not [ln for ln in lines if f".{PORT}" in ln or " tcp " in ln.lower() or "Flags [" in ln]
    # Nothing else rode along but link-layer chatter (ARP, IPv6 neighbour discovery).
    assert not [ln for ln in lines if " IP " not in ln and "ARP" not in ln and "IP6" not in ln], lines
    assert PATIENT not in raw


def test_lan_capture_of_the_same_c_store_shows_the_patient_name_in_the_clear():
    # The twin: the same capture on the site LAN sees DICOM and the patient name,
    # so the WAN capture's silence is the tunnel's doing, not the capture's.
    with Capture("st-site-gw", S["scenario_site_gw_lan"]) as lan:
        assert store_accepted()
    packets = lan.packets()
    assert any(f"{PACS}.{PORT}" in ln for ln in packets), packets
    assert PATIENT in lan.raw()


# --- nobody else ---------------------------------------------------------------------------


def test_outsider_on_the_wan_cannot_reach_the_pacs_dicom_port():
    res = associate("st-outsider", dimse="echo", expect="denied", timeout=4)
    assert res["outcome"] in ("timeout", "refused"), res


def test_outsider_cannot_reach_the_pacs_rest_port_either_while_the_modality_can():
    assert tcp("st-outsider", PACS, REST_PORT) == "timeout"
    assert tcp("st-modality", PACS, REST_PORT) == "open"


def refused_ike(name):
    out = host(name).check_output("nft list chain inet strongswan_tunnel refuse_ike")
    return int(re.search(r"counter packets ([0-9]+)", out).group(1))


def test_ike_from_anyone_but_the_peer_is_dropped_at_the_cloud_gateway():
    before = refused_ike("st-cloud-gw")
    code = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor p in (500,4500): s.sendto(b'\\0'*64,(sys.argv[1],p))"
    host("st-outsider").check_output("python3 -c %s %s", code, CLOUD_GW_WAN)
    time.sleep(0.5)
    assert refused_ike("st-cloud-gw") >= before + 2
    # The peer's IKE is accepted: its SA is up and none of its packets were refused.
    assert "ESTABLISHED" in host("st-cloud-gw").check_output(f"swanctl --list-sas --ike {TUNNEL}")


def test_tunnel_down_is_in_both_journals_and_leaves_the_site_lan_no_clear_path_to_the_pacs():
    gw = host("st-site-gw")
    assert store_accepted()
    marks = cursors()
    gw.check_output("systemctl stop strongswan")
    try:
        assert wait_for(lambda: "ipsec0" not in gw.check_output("ip route show table 220"), 20) is not None
        # The tunnel going down is in both gateways' journals (charon-systemd, strongswan.service):
        # the stopping end deletes the IKE_SA, the other end is told so.
        down = f"deleting IKE_SA {TUNNEL}["
        assert wait_for(lambda: down in journal_since("st-site-gw", marks["st-site-gw"]), 10) is not None
        told = f"received DELETE for IKE_SA {TUNNEL}["
        assert wait_for(lambda: told in journal_since("st-cloud-gw", marks["st-cloud-gw"]), 10) is not None
        # The gateways still have their clear route over the WAN: the guard and the
        # cloud gateway's firewall are what stop the association.
        assert CLOUD_GW_WAN in gw.check_output(f"ip route show {S['scenario_cloud_net']}")
        with Capture("st-site-gw", SITE_GW_WAN) as wan:
            res = associate("st-modality", dimse="echo", expect="denied", timeout=4)
        assert res["outcome"] in ("timeout", "refused", "aborted"), res
        assert not [ln for ln in wan.packets() if f".{PORT}" in ln or "Flags [" in ln]
        assert PATIENT not in wan.raw()
    finally:
        marks["st-site-gw"] = cursor("st-site-gw")
        gw.check_output("systemctl start strongswan")
    assert wait_for(store_accepted, RECOVERY_LIMIT) is not None
    # And coming back up: the CHILD_SA between the two sites' subnets, established.
    up = re.compile(rf"CHILD_SA {re.escape(TUNNEL)}{{\d+}} established with SPIs .* and TS {re.escape(S['scenario_site_lan'])} === ")
    assert up.search(journal_since("st-site-gw", marks["st-site-gw"]))


# --- recovery ------------------------------------------------------------------------------


@pytest.mark.parametrize("gateway", ["st-site-gw", "st-cloud-gw"])
def test_tunnel_comes_back_by_itself_after_charon_is_killed(gateway):
    gw = host(gateway)
    assert store_accepted()
    pid = gw.check_output("systemctl show --property MainPID --value strongswan").strip()
    assert pid not in ("", "0")
    start = time.monotonic()
    gw.check_output(f"kill -9 {pid}")
    # No manual step: systemd restarts charon, which loads and initiates the tunnel.
    while time.monotonic() - start < RECOVERY_LIMIT + 30:
        if store_accepted():
            break
        time.sleep(1)
    elapsed = time.monotonic() - start
    # pytest keeps a passing test's output to itself: the figure goes to a file in the
    # ephemeral directory, which conftest.py prints in the run's summary.
    figure = f"{gateway}: associations succeed again {elapsed:.1f} s after charon was killed (limit {RECOVERY_LIMIT:.0f} s)"
    with open(RECOVERY_FILE, "a", encoding="utf-8") as f:
        f.write(figure + "\n")
    new_pid = gw.check_output("systemctl show --property MainPID --value strongswan").strip()
    assert new_pid not in ("", "0", pid), figure
    assert elapsed < RECOVERY_LIMIT, figure


# --- the key -------------------------------------------------------------------------------


def psk():
    return PSK_FILE.read_text().split()[0]


def test_generated_psk_is_long_and_kept_0600_on_the_controller():
    assert len(psk()) >= 32
    assert PSK_FILE.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("gateway", ["st-site-gw", "st-cloud-gw"])
def test_both_ends_hold_the_same_psk_in_a_root_only_file(gateway):
    f = host(gateway).file(SECRETS)
    assert f.mode == 0o600 and f.user == "root"
    assert f'secret = "{psk()}"' in f.content_string


@pytest.mark.parametrize("gateway", ["st-site-gw", "st-cloud-gw"])
def test_psk_is_in_no_log_and_no_world_readable_file(gateway):
    gw, key = host(gateway), psk()
    journal = subprocess.run(["docker", "exec", gateway, "journalctl", "--no-pager", "-o", "verbose"],
                             capture_output=True, check=True).stdout
    assert journal and key.encode() not in journal
    # The key is handed to grep on stdin, so it appears in no command line.
    cmd = ("find / \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -type f -perm -o=r -print0 "
           "| xargs -0 grep -lsF -f - ; true")
    found = subprocess.run(["docker", "exec", "-i", gateway, "sh", "-c", cmd], input=key.encode() + b"\n",
                           capture_output=True, check=True).stdout.decode().split()
    assert found == []
    # The twin: the same search over root-only files finds the secrets file.
    cmd_all = "grep -rlsF -f - /etc/swanctl ; true"
    assert SECRETS in subprocess.run(["docker", "exec", "-i", gateway, "sh", "-c", cmd_all], input=key.encode() + b"\n",
                                     capture_output=True, check=True).stdout.decode().split()
    del gw


def test_psk_is_in_no_result_of_a_verbose_run():
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(EPHEMERAL, "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    proc = subprocess.run(["ansible-playbook", "-vvv", "--check", "--diff", "-i", INVENTORY,
                           str(SCENARIO_DIR / "converge.yml"), "--limit", "ipsec_gateways"],
                          capture_output=True, text=True, timeout=600, check=False, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert re.search(r"st-site-gw\s*:\s*ok=\d+\s+changed=0", proc.stdout), proc.stdout[-3000:]
    assert psk() not in proc.stdout + proc.stderr
