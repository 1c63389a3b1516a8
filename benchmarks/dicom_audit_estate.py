# -*- coding: utf-8 -*-
"""dicom_audit at estate scale: 1,000 endpoints behind a slow, lossy link, against nmap dicom-ping.

The run builds its own estate on the machine, in lab address ranges only, and removes it
afterwards:

- a network namespace (``dicomsec-estate-<pid>``) joined to this one by a point-to-point link
  that delays every packet by half the round trip each way (default 20 ms round trip). The
  link is a pair of TUN devices and a small process carrying packets between them late: the
  kernels this runs on may lack ``tc netem`` (sch_netem), and this one does;
- 1,000 endpoint addresses in 198.19.0.0/22 inside it, all on DICOM's port 11112;
- 10 % of them drop every packet silently and 10 % refuse the connection (nftables in the
  namespace); the rest mix servers that let anyone in, servers with a calling-AE whitelist,
  servers that require a user identity, real pynetdicom SCPs and one real Orthanc (configured
  by pacs_identity, in a namespace of its own behind the same kind of link).

Then, side by side, in rotating order for ``--rounds`` rounds: nmap 7.x ``--script
+dicom-ping`` over every endpoint, and dicom_audit's whole matrix over the same endpoints. It
prints wall times, their ratio, checks per second, associations per check, and every verdict
against the truth of its endpoint: a check on an endpoint that cannot answer must be
inconclusive or report the endpoint unreachable, never a pass.

Usage: python benchmarks/dicom_audit_estate.py [--endpoints 1000] [--rtt-ms 20] [--rounds 1]
       [--concurrency 512] [--connect-timeout 2] [--timeout 5] [--json]
Needs root (namespaces, nftables, /dev/net/tun), nmap, Debian's orthanc, and pynetdicom.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import ipaddress
import json
import os
import re
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))
from collections_path import collections_path  # noqa: E402  (the tests' helper, one copy)
from lab_servers import cpu_seconds  # noqa: E402

PORT = 11112
ENDPOINT_NET = ipaddress.ip_network("198.19.0.0/22")
LINK_NET = ipaddress.ip_network("198.19.255.0/30")
ORTHANC_LINK_NET = ipaddress.ip_network("198.19.255.4/30")
ORTHANC_ADDRESS = ipaddress.ip_address("198.19.3.250")
CALLED_AE = "ESTATEPACS"
CALLING_AE = "CT01"  # registered with every endpoint that has a whitelist
USER, PASSCODE = "ct01", "correct-horse-battery"  # the tests' synthetic user (lab_servers.USERS)
# The mix of every 20 endpoints, in order; the last slot of the estate is the Orthanc.
MIX = (["silent"] * 2 + ["refused"] * 2 + ["open"] * 6 + ["whitelist"] * 6 + ["identity"] * 3 + ["pynetdicom"])
KINDS = ("silent", "refused", "open", "whitelist", "identity", "pynetdicom_open", "pynetdicom_whitelist", "orthanc")


def sh(*cmd, check=True, **kwargs):
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, **kwargs)


# ---------------------------------------------------------------------------------------
# The estate
# ---------------------------------------------------------------------------------------


def plan(count):
    """(address, kind) of every endpoint: the mix repeated, the Orthanc last."""
    hosts = list(ENDPOINT_NET.hosts())
    endpoints = []
    for index in range(count - 1):
        kind = MIX[index % len(MIX)]
        if kind == "pynetdicom":
            kind = "pynetdicom_whitelist" if (index // len(MIX)) % 2 else "pynetdicom_open"
        endpoints.append((str(hosts[index]), kind))
    endpoints.append((str(ORTHANC_ADDRESS), "orthanc"))
    return endpoints


TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


def delay_line(host_if, ns_if, namespace, delay_ms):
    """Carry every packet between two TUN devices, one in each namespace, delay_ms late each way.

    The stand-in for ``tc netem``, which kernels without sch_netem (this machine's among them)
    lack: the same one-way delay on every packet, none lost or reordered, in both directions.
    The delay is the same for every packet, so packets fall due in the order they arrived: one
    queue and one epoll wait carry them, with no timer per packet. The line's own CPU is
    counted as the simulated estate's, and a real network spends none of the scanner's.
    """
    import collections
    import fcntl
    import select

    def tun(name):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        return fd

    outside, inside = tun(host_if), tun(ns_if)
    # The device keeps its open file when it moves: this process still carries its packets.
    sh("ip", "link", "set", ns_if, "netns", namespace)
    delay = delay_ms / 1000.0
    other = {outside: inside, inside: outside}
    queue = collections.deque()  # (due, device to write, packet), oldest first
    poller = select.epoll()
    for fd in other:
        poller.register(fd, select.EPOLLIN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    clock, read = time.monotonic, os.read
    print("ready", flush=True)
    while True:
        for fd, _events in poller.poll(max(queue[0][0] - clock(), 0.0) if queue else -1):
            due, target = clock() + delay, other[fd]
            while True:
                try:
                    packet = read(fd, 65535)
                except BlockingIOError:
                    break
                queue.append((due, target, packet))
        now = clock()
        while queue and queue[0][0] <= now:
            _due, target, packet = queue.popleft()
            _write(target, packet)


def _write(fd, packet):
    try:
        os.write(fd, packet)
    except OSError:
        pass  # the device is gone at shutdown, or its queue is full: as a link would, drop it


class Namespace:
    """A network namespace behind a point-to-point link that delays each packet by rtt/2."""

    def __init__(self, name, link, rtt_ms, routes):
        self.name = name
        suffix = "%d%s" % (os.getpid() % 10000, name[-1])
        self.host_if = "dse%sh" % suffix
        self.ns_if = "dse%sn" % suffix
        self.link = link
        self.rtt_ms = rtt_ms
        self.routes = routes
        self.up = False
        self.line = None

    def __enter__(self):
        try:
            return self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _start(self):
        host_addr, ns_addr = list(self.link.hosts())
        sh("ip", "netns", "add", self.name)
        self.up = True
        self.line = subprocess.Popen([sys.executable, __file__, "--delay-line", self.host_if, self.ns_if, self.name,
                                      str(self.rtt_ms / 2.0)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        if self.line.stdout.readline().strip() != "ready":
            raise RuntimeError("the delay line did not start: %s" % self.line.stderr.read()[-2000:])
        sh("ip", "addr", "add", "%s/%d" % (host_addr, self.link.prefixlen), "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        self.exec("ip", "addr", "add", "%s/%d" % (ns_addr, self.link.prefixlen), "dev", self.ns_if)
        self.exec("ip", "link", "set", self.ns_if, "up")
        self.exec("ip", "link", "set", "lo", "up")
        self.exec("ip", "route", "add", "default", "via", str(host_addr))
        for route in self.routes:
            sh("ip", "route", "add", str(route), "via", str(ns_addr))
        return self

    def exec(self, *cmd, **kwargs):
        return sh("ip", "netns", "exec", self.name, *cmd, **kwargs)

    def add_addresses(self, addresses):
        batch = "".join("addr add %s/32 dev lo\n" % a for a in addresses)
        sh("ip", "-n", self.name, "-batch", "-", input=batch)

    def popen(self, cmd, **kwargs):
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kwargs)

    def __exit__(self, *exc):
        for route in self.routes:
            sh("ip", "route", "del", str(route), check=False)
        if self.line is not None:
            # Its devices go with its open files.
            self.line.send_signal(signal.SIGTERM)
            try:
                self.line.wait(10)
            except subprocess.TimeoutExpired:
                self.line.kill()
                self.line.wait(5)
        if self.up:
            sh("ip", "netns", "del", self.name, check=False)


def firewall(namespace, endpoints):
    silent = [a for a, kind in endpoints if kind == "silent"]
    refused = [a for a, kind in endpoints if kind == "refused"]
    rules = """
table inet dicomsec_estate {
    set silent { type ipv4_addr; elements = { %s } }
    set refused { type ipv4_addr; elements = { %s } }
    chain input {
        type filter hook input priority 0; policy accept;
        ip daddr @silent drop
        ip daddr @refused tcp flags syn reject with tcp reset
    }
}
""" % (", ".join(silent), ", ".join(refused))
    namespace.exec("nft", "-f", "-", input=rules)


# ---------------------------------------------------------------------------------------
# The servers, inside the namespace (this file run with --serve)
# ---------------------------------------------------------------------------------------


def serve(spec_path, part):
    """Every endpoint but the Orthanc, in two processes: ``part`` ``asyncio`` serves the
    asyncio responders, ``pynetdicom`` the pynetdicom SCPs.

    The SCPs have a process of their own, as real servers do: pynetdicom polls each
    association's socket with select(), which cannot take a descriptor above 1023, and in one
    process with the responders' sockets every SCP association got one and was closed unanswered.
    """
    spec = json.loads(Path(spec_path).read_text())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if part == "pynetdicom":
        serve_scps(spec)
    else:
        serve_responders(spec)


def serve_scps(spec):
    from lab_servers import ScpPolicy, start_scp
    from pynetdicom.transport import AssociationServer

    AssociationServer.request_queue_size = 512
    scps = []
    for address, kind in spec["endpoints"]:
        if kind.startswith("pynetdicom"):
            policy = ScpPolicy.CALLING_WHITELIST if kind.endswith("whitelist") else ScpPolicy.OPEN
            scps.append(start_scp(policy, host=address, port=PORT, ae_title=CALLED_AE, studies=()))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    try:
        stop.wait()
    finally:
        for scp in scps:
            scp.shutdown()


def serve_responders(spec):
    from dicom_audit_vs_nmap import Responder

    class IdentityResponder(Responder):
        """Accepts only an association that carries the valid type 2 identity (else 1/2/1)."""

        def handle(self, pdu):
            if pdu[0] == 0x01 and not _has_valid_identity(pdu):
                self.transport.write(b"\x03\x00\x00\x00\x00\x04\x00\x01\x02\x01")
                self.transport.close()
                return
            super().handle(pdu)

    async def main():
        loop = asyncio.get_running_loop()
        servers = []
        for address, kind in spec["endpoints"]:
            if kind in ("open", "whitelist", "silent", "refused"):
                factory = functools.partial(Responder, kind == "whitelist")
            elif kind == "identity":
                factory = functools.partial(IdentityResponder, False)
            else:
                continue
            servers.append(await loop.create_server(factory, address, PORT, backlog=512))
        print("ready", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        for server in servers:
            server.close()

    asyncio.run(main())


def _has_valid_identity(pdu):
    """Whether an A-ASSOCIATE-RQ's user information holds the synthetic user's type 2 identity."""
    offset = 74
    while offset + 4 <= len(pdu):
        item_type, item_length = pdu[offset], struct.unpack(">H", pdu[offset + 2:offset + 4])[0]
        if item_type == 0x50:
            sub = offset + 4
            end = sub + item_length
            while sub + 4 <= end:
                sub_type, sub_length = pdu[sub], struct.unpack(">H", pdu[sub + 2:sub + 4])[0]
                if sub_type == 0x58 and pdu[sub + 4] == 2:
                    body = pdu[sub + 6:sub + 4 + sub_length]
                    primary_length = struct.unpack(">H", body[:2])[0]
                    primary = body[2:2 + primary_length]
                    secondary_length = struct.unpack(">H", body[2 + primary_length:4 + primary_length])[0]
                    secondary = body[4 + primary_length:4 + primary_length + secondary_length]
                    return primary == USER.encode() and secondary == PASSCODE.encode()
                sub += 4 + sub_length
        offset += 4 + item_length
    return False


def start_orthanc(namespace, work):
    """The real Orthanc, configured by pacs_identity, in its own namespace on ORTHANC_ADDRESS."""
    from lab_servers import Orthanc

    orthanc = Orthanc(work / "orthanc", aet=CALLED_AE, dicom_port=PORT,
                      # The audit reaches it from this side of the Orthanc's link.
                      modalities=[{"name": "ct01", "aet": CALLING_AE, "host": str(list(ORTHANC_LINK_NET.hosts())[0]),
                                   "allow": ["echo", "find", "store"]}])
    orthanc._configure()  # pylint: disable=protected-access
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    env.update(orthanc.environment)
    log = open(orthanc.log_path, "wb")
    proc = namespace.popen([orthanc.binary(), str(orthanc.config_dir)], stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc, log


def wait_listening(namespace, address, port, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = namespace.exec("ss", "-Hltn", "src", "%s:%d" % (address, port), check=False).stdout
        if out.strip():
            return
        time.sleep(0.2)
    raise RuntimeError("nothing listens on %s:%d in %s" % (address, port, namespace.name))


# ---------------------------------------------------------------------------------------
# The scanners
# ---------------------------------------------------------------------------------------


class CpuMeter:
    """Where one scanner's wall time went: the scanner's own CPU seconds (this process's
    children), the simulated estate's (its servers, the Orthanc and the delay lines: work that
    real endpoints and a real network do on other machines), and the share of the machine's
    cores that was busy."""

    def __init__(self, estate_parts):
        # {part: callable returning its processes' pids}
        self.estate_parts = estate_parts

    def read(self):
        children = os.times()
        cpu = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        return {"scanner": children.children_user + children.children_system,
                "estate": {part: cpu_seconds(pids()) for part, pids in self.estate_parts.items()},
                "busy": (sum(cpu) - cpu[3] - cpu[4]) / hz, "all": sum(cpu) / hz}

    def measure(self, run):
        before = self.read()
        value = run()
        after = self.read()
        parts = {part: after["estate"][part] - before["estate"][part] for part in self.estate_parts}
        return value, {"scanner_cpu_s": after["scanner"] - before["scanner"],
                       "estate_cpu_s": sum(parts.values()), "estate_parts_cpu_s": parts,
                       "machine_busy_share": (after["busy"] - before["busy"]) / max(after["all"] - before["all"], 1e-9)}


def tree_pids(root_pid):
    """``root_pid`` and every process below it."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def run_nmap(endpoints, work):
    targets = work / "targets.txt"
    targets.write_text("\n".join(a for a, _kind in endpoints) + "\n")
    cmd = ["nmap", "-n", "-Pn", "-sT", "-p", str(PORT), "--script", "+dicom-ping", "-iL", str(targets), "-oX", "-"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    wall = time.perf_counter() - start
    verdicts = {}
    for host in re.finditer(r'<host\b.*?</host>', proc.stdout, re.S):
        body = host.group(0)
        address = re.search(r'<address addr="([^"]+)"', body)
        if not address:
            continue
        if "Any AET is accepted" in body:
            verdicts[address.group(1)] = "open"
        elif "Called AET check enabled" in body:
            verdicts[address.group(1)] = "restricted"
        elif 'state="open"' in body:
            verdicts[address.group(1)] = "unknown"
        else:
            verdicts[address.group(1)] = "unreachable"
    return wall, verdicts


AUDIT_CHILD = r"""
import json, sys, time
start = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_audit
config = json.loads(open(sys.argv[2]).read())
reports, summary = dicom_audit.audit(config)
out = {r["host"]: {"findings": {f["id"]: f.get("verdict", "pass" if f["passed"] else "fail") for f in r["findings"]},
                   "inconclusive": {f["id"]: f.get("evidence", "") for f in r["findings"] if f.get("verdict") == "inconclusive"},
                   "skipped": [s["id"] for s in r["skipped"]], "associations": r["associations"]} for r in reports}
print(json.dumps({"summary": summary, "endpoints": out, "process_s": time.perf_counter() - start}))
"""


def run_audit(endpoints, args, work):
    config = {
        "endpoints": [{"name": a, "host": a, "port": PORT, "called_ae": CALLED_AE} for a, _kind in endpoints],
        "calling_ae": CALLING_AE,
        "identity": {"type": "username_passcode", "username": USER, "passcode": PASSCODE},
        "concurrency": args.concurrency,
        "timeout": args.timeout,
        "fail_on": "never",
    }
    if args.checks:
        config["checks"] = args.checks
    if args.connect_timeout is not None:
        config["connect_timeout"] = args.connect_timeout
    path = work / "audit.json"
    path.write_text(json.dumps(config))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", AUDIT_CHILD, collections_path(), str(path)],
                          capture_output=True, text=True, timeout=1800, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return wall, json.loads(proc.stdout)


# ---------------------------------------------------------------------------------------
# The truth
# ---------------------------------------------------------------------------------------

# What each check must conclude for each kind of endpoint, where the kind decides it. A
# check missing from a kind's row is not judged (its verdict is printed, not scored).
UNREACHABLE = {"reachable": "fail"}
EXPECTED = {
    "silent": UNREACHABLE,
    "refused": UNREACHABLE,
    "open": {"any_ae": "fail", "authorized": "pass", "no_identity": "fail", "wrong_passcode": "fail",
             "identity_ignored": "fail", "cfind_exposure": "fail", "storage_exposure": "fail",
             "cget_exposure": "fail", "called_ae_guess": "fail", "vendor_default_ae": "fail"},
    "whitelist": {"any_ae": "pass", "authorized": "pass", "no_identity": "fail", "cfind_exposure": "pass",
                  "storage_exposure": "pass", "cget_exposure": "pass"},
    "identity": {"any_ae": "pass", "authorized": "pass", "no_identity": "pass", "wrong_passcode": "pass",
                 "cfind_exposure": "pass", "storage_exposure": "pass", "cget_exposure": "pass",
                 "vendor_default_ae": "pass"},
    "pynetdicom_open": {"any_ae": "fail", "authorized": "pass", "no_identity": "fail", "cfind_exposure": "fail"},
    "pynetdicom_whitelist": {"any_ae": "pass", "authorized": "pass", "cfind_exposure": "pass"},
    "orthanc": {"any_ae": "pass", "authorized": "pass", "cfind_exposure": "pass", "no_identity": "fail",
                "identity_ignored": "fail"},
}
NMAP_TRUTH = {"silent": "unreachable", "refused": "unreachable", "open": "open", "whitelist": "restricted",
              "identity": "restricted", "pynetdicom_open": "open", "pynetdicom_whitelist": "restricted",
              "orthanc": "restricted"}


def judge(endpoints, audit):
    kinds = dict(endpoints)
    right = wrong = false_pass = inconclusive = 0
    wrong_rows = []
    for address, kind in endpoints:
        found = audit["endpoints"].get(address, {}).get("findings", {})
        for check, verdict in found.items():
            if verdict == "inconclusive":
                inconclusive += 1
            expected = EXPECTED[kind].get(check)
            if expected is None:
                continue
            if verdict == expected:
                right += 1
            else:
                wrong += 1
                wrong_rows.append((address, kind, check, expected, verdict))
                if verdict == "pass":
                    false_pass += 1
        if kind in ("silent", "refused") and any(v == "pass" for c, v in found.items() if c != "reachable"):
            false_pass += 1
            wrong_rows.append((address, kinds[address], "any", "no pass", "pass"))
    return {"right": right, "wrong": wrong, "false_pass": false_pass, "inconclusive": inconclusive,
            "wrong_rows": wrong_rows[:20]}


def judge_nmap(endpoints, verdicts):
    """(right, {kind: wrong count})."""
    wrong = {}
    for address, kind in endpoints:
        if verdicts.get(address, "unreachable") != NMAP_TRUTH[kind]:
            wrong[kind] = wrong.get(kind, 0) + 1
    return len(endpoints) - sum(wrong.values()), wrong


def inconclusive_by_kind(endpoints, audit):
    counts = {}
    for address, kind in endpoints:
        found = audit["endpoints"].get(address, {}).get("findings", {})
        for check, verdict in found.items():
            if verdict == "inconclusive":
                key = "%s/%s" % (kind, check)
                counts[key] = counts.get(key, 0) + 1
    return counts


def inconclusive_evidence(endpoints, audit):
    """One example of what the audit saw, for each kind and check it could not tell."""
    examples = {}
    for address, kind in endpoints:
        for check, evidence in audit["endpoints"].get(address, {}).get("inconclusive", {}).items():
            examples.setdefault("%s/%s" % (kind, check), "%s: %s" % (address, evidence))
    return examples


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def run(args):
    if os.geteuid() != 0:
        sys.exit("needs root: it creates network namespaces, nftables rules and tc qdiscs")
    if shutil.which("nmap") is None:
        sys.exit("needs nmap (Debian package nmap)")
    endpoints = plan(args.endpoints)
    work = Path(tempfile.mkdtemp(prefix="dicom-estate-"))
    work.chmod(0o755)
    tag = "%d" % (os.getpid() % 100000)
    servers = []
    orthanc = orthanc_log = None
    results = []
    try:
        with Namespace("dicomsec-estate-%sa" % tag, LINK_NET, args.rtt_ms, [ENDPOINT_NET]) as estate, \
                Namespace("dicomsec-estate-%sb" % tag, ORTHANC_LINK_NET, args.rtt_ms,
                          [ipaddress.ip_network("%s/32" % ORTHANC_ADDRESS)]) as pacs_ns:
            estate.add_addresses([a for a, kind in endpoints if kind != "orthanc"])
            pacs_ns.add_addresses([str(ORTHANC_ADDRESS)])
            firewall(estate, endpoints)
            spec = work / "spec.json"
            spec.write_text(json.dumps({"endpoints": [e for e in endpoints if e[1] != "orthanc"]}))
            for part in ("asyncio", "pynetdicom"):
                proc = estate.popen([sys.executable, __file__, "--serve", str(spec), "--serve-part", part],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                servers.append(proc)
                if proc.stdout.readline().strip() != "ready":
                    raise RuntimeError("the %s endpoints did not start: %s" % (part, proc.stderr.read()[-2000:]))
            orthanc, orthanc_log = start_orthanc(pacs_ns, work)
            wait_listening(pacs_ns, "0.0.0.0", PORT)
            counts = {kind: sum(1 for _a, k in endpoints if k == kind) for kind in KINDS}
            print("estate: %d endpoints (%s), round trip %d ms, port %d"
                  % (len(endpoints), ", ".join("%d %s" % (n, k) for k, n in counts.items()), args.rtt_ms, PORT))
            meter = CpuMeter({
                "responders": lambda: tree_pids(servers[0].pid), "pynetdicom SCPs": lambda: tree_pids(servers[1].pid),
                "Orthanc": lambda: tree_pids(orthanc.pid),
                "delay lines": lambda: tree_pids(estate.line.pid) + tree_pids(pacs_ns.line.pid)})
            for index in range(args.rounds):
                nmap_first = index % 2 == 0
                order = ("nmap", "audit") if nmap_first else ("audit", "nmap")
                row = {}
                for scanner in order:
                    if scanner == "nmap":
                        (row["nmap_wall"], row["nmap_verdicts"]), row["nmap_cpu"] = meter.measure(
                            lambda: run_nmap(endpoints, work))
                    else:
                        (row["audit_wall"], row["audit"]), row["audit_cpu"] = meter.measure(
                            lambda: run_audit(endpoints, args, work))
                results.append(row)
                report_round(index, row, endpoints)
    finally:
        for proc in servers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if orthanc is not None:
            orthanc.kill()
            orthanc.wait(10)
            orthanc_log.close()
        shutil.rmtree(work, ignore_errors=True)
    return endpoints, results


def report_round(index, row, endpoints):
    audit = row["audit"]
    summary = audit["summary"]
    verdicts = judge(endpoints, audit)
    nmap_right, nmap_wrong = judge_nmap(endpoints, row["nmap_verdicts"])
    checks = summary["checks"]
    print("-- round %d" % (index + 1))
    print("nmap dicom-ping: %.2f s, 1 check per endpoint, verdicts right %d/%d%s"
          % (row["nmap_wall"], nmap_right, len(endpoints),
             " (wrong: %s)" % ", ".join("%d %s" % (n, k) for k, n in nmap_wrong.items()) if nmap_wrong else ""))
    print("dicom_audit:     %.2f s whole process (%.2f s scan), %d checks (%.1f per endpoint), %.0f checks/s, "
          "%d associations (%.2f per check)"
          % (row["audit_wall"], summary["elapsed_ms"] / 1000, checks, checks / len(endpoints),
             checks / row["audit_wall"], summary["associations"], summary["associations"] / max(checks, 1)))
    by_kind = inconclusive_by_kind(endpoints, audit)
    print("verdicts against the truth: %d right, %d wrong, %d false passes; %d inconclusive%s"
          % (verdicts["right"], verdicts["wrong"], verdicts["false_pass"], verdicts["inconclusive"],
             " (%s)" % ", ".join("%d on %s" % (n, k) for k, n in by_kind.items()) if by_kind else ""))
    for key, example in inconclusive_evidence(endpoints, audit).items():
        print("   inconclusive %s, e.g. %s" % (key, example))
    for wrong in verdicts["wrong_rows"]:
        print("   wrong: %s (%s) %s: expected %s, got %s" % wrong)
    for name in ("nmap", "audit"):
        cpu = row[name + "_cpu"]
        print("  %-5s CPU: scanner %.2f s, simulated estate %.2f s (%s); machine busy %.0f%% of %d cores"
              % (name, cpu["scanner_cpu_s"], cpu["estate_cpu_s"],
                 ", ".join("%s %.2f" % kv for kv in cpu["estate_parts_cpu_s"].items()),
                 100 * cpu["machine_busy_share"], os.cpu_count()))
    print("wall time ratio dicom_audit/nmap: %.2f (goal: at most 1.00 with every verdict right and no false pass)"
          % (row["audit_wall"] / row["nmap_wall"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--serve-part", choices=("asyncio", "pynetdicom"), help=argparse.SUPPRESS)
    parser.add_argument("--delay-line", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--rtt-ms", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=512)
    parser.add_argument("--connect-timeout", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--checks", nargs="*", help="the audit's checks (default: the module's default set)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.serve_part)
        return
    if args.delay_line:
        host_if, ns_if, namespace, delay_ms = args.delay_line
        delay_line(host_if, ns_if, namespace, float(delay_ms))
        return
    if not 20 <= args.endpoints <= ENDPOINT_NET.num_addresses - 8:
        parser.error("--endpoints must be 20 to %d" % (ENDPOINT_NET.num_addresses - 8))
    endpoints, results = run(args)
    if len(results) > 1:
        ratios = sorted(r["audit_wall"] / r["nmap_wall"] for r in results)
        print("-- median ratio over %d rounds: %.2f (rounds %s)"
              % (len(results), statistics.median(ratios), ", ".join("%.2f" % r for r in ratios)))
    if args.json:
        print(json.dumps([{"nmap_wall": r["nmap_wall"], "audit_wall": r["audit_wall"],
                           "nmap_cpu": r["nmap_cpu"], "audit_cpu": r["audit_cpu"],
                           "summary": r["audit"]["summary"], "judged": judge(endpoints, r["audit"])}
                          for r in results], indent=2))


if __name__ == "__main__":
    main()
