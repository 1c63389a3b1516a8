# -*- coding: utf-8 -*-
"""dicom_audit's full check matrix vs nmap's dicom-ping over the same loopback endpoints.

Starts N loopback DICOM endpoints in a separate process (half open, half with a calling-AE
whitelist), then measures, side by side against the same endpoints:

1. nmap 7.x ``--script +dicom-ping`` over all endpoints (whole process wall time);
2. dicom_audit's whole matrix (every check) over the same endpoints, in a fresh Python
   process (whole process wall time, and the scan alone);
3. verdict agreement: nmap's "Any AET is accepted" against the audit's ``any_ae`` finding,
   and every finding of the audit against what the endpoint's kind must give;
4. per-association latency of the engine (sequential, dimse none) against a bare TCP
   connect to the same port.

Two kinds of endpoint (``--responder``):

- ``asyncio`` (default): a small asyncio acceptor that speaks just enough PS3.8 and PS3.7
  for association, C-ECHO, C-FIND and release.  It costs about 100 us of CPU per
  association, so the scanners, not the server, are what is measured.
- ``pynetdicom``: pynetdicom SCPs (Verification and Study Root C-FIND, half of them with a
  calling-AE whitelist), a real and much slower implementation: milliseconds of CPU per
  association, so the server's cost per association dominates both scanners.

Before measuring, each scanner runs once untimed (``--no-warmup`` skips this): the first
run pays for cold file caches and the responder's first answers of each kind, and in
earlier versions of this benchmark that cost (about 0.2 s) fell on nmap, which ran first.
``--rounds N`` repeats the pair N times, alternating which scanner goes first, and prints
every round and the medians: on a shared machine one run is noisy.

Usage: python benchmarks/dicom_audit_vs_nmap.py [--endpoints 200] [--concurrency 64]
       [--responder asyncio|pynetdicom] [--rounds 1] [--no-warmup]
Runs on loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from collections_path import collections_path  # noqa: E402  (the tests' helper, one copy)
from dicom_pdus import accept_pdu  # noqa: E402
from lab_servers import CALLING_WHITELIST, LOOPBACK, ScpPolicy, shutdown_all, start_scp  # noqa: E402

RESPONDER_IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1234.99"
# The asyncio responder lets in the calling AE titles the tests' whitelist SCPs let in.
WHITELIST = frozenset(CALLING_WHITELIST)


# ---------------------------------------------------------------------------------------
# The loopback endpoints
# ---------------------------------------------------------------------------------------


def _response_bytes(command_field, context_id, message_id):
    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import encode

    cmd = Dataset()
    cmd.AffectedSOPClassUID = "1.2.840.10008.1.1" if command_field == 0x8030 else "1.2.840.10008.5.1.4.1.2.2.1"
    cmd.CommandField = command_field
    cmd.MessageIDBeingRespondedTo = message_id
    cmd.CommandDataSetType = 0x0101
    cmd.Status = 0x0000
    body = encode(cmd, True, True)
    group_length = Dataset()
    group_length.CommandGroupLength = len(body)
    body = encode(group_length, True, True) + body
    pdv = struct.pack(">IBB", len(body) + 2, context_id, 0x03) + body
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


class Responder(asyncio.Protocol):
    """A minimal acceptor: enough of PS3.8 for association, C-ECHO, C-FIND and release."""

    accept_cache = {}
    response_cache = {}

    def __init__(self, whitelist):
        self.whitelist = whitelist
        self.buffer = bytearray()
        self.transport = None
        self.pending = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        while len(self.buffer) >= 6:
            length = struct.unpack(">I", self.buffer[2:6])[0]
            if len(self.buffer) < 6 + length:
                return
            pdu = bytes(self.buffer[: 6 + length])
            del self.buffer[: 6 + length]
            self.handle(pdu)

    def handle(self, pdu):
        kind = pdu[0]
        if kind == 0x01:
            called = pdu[10:26].decode("ascii").strip()
            calling = pdu[26:42].decode("ascii").strip()
            if self.whitelist and calling not in WHITELIST:
                self.transport.write(b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x03")
                self.transport.close()
                return
            ids = []
            offset = 74
            while offset + 4 <= len(pdu):
                item_type = pdu[offset]
                item_length = struct.unpack(">H", pdu[offset + 2:offset + 4])[0]
                if item_type == 0x20:
                    ids.append(pdu[offset + 4])
                offset += 4 + item_length
            key = (called, calling, tuple(ids))
            if key not in self.accept_cache:
                self.accept_cache[key] = accept_pdu(
                    called, calling, [(i, 0) for i in ids], implementation_uid=RESPONDER_IMPLEMENTATION_UID)
            self.transport.write(self.accept_cache[key])
        elif kind == 0x04:
            context_id, control = pdu[10], pdu[11]
            if not control & 0x01:
                # The C-FIND identifier: answer the query it completes (no matches).
                if control & 0x02 and self.pending:
                    self.transport.write(self.pending)
                    self.pending = None
                return
            command = pdu[12:]
            # CommandField (0000,0100), MessageID (0000,0110), CommandDataSetType
            # (0000,0800), implicit VR little endian
            field = struct.unpack("<H", command[command.index(b"\x00\x00\x00\x01\x02\x00\x00\x00") + 8:][:2])[0]
            message_id = struct.unpack("<H", command[command.index(b"\x00\x00\x10\x01\x02\x00\x00\x00") + 8:][:2])[0]
            has_data = struct.unpack("<H", command[command.index(b"\x00\x00\x00\x08\x02\x00\x00\x00") + 8:][:2])[0] != 0x0101
            response_field = field | 0x8000
            key = (response_field, context_id, message_id)
            if key not in self.response_cache:
                self.response_cache[key] = _response_bytes(response_field, context_id, message_id)
            if has_data:
                self.pending = self.response_cache[key]
            else:
                self.transport.write(self.response_cache[key])
        elif kind == 0x05:
            self.transport.write(b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00")
            self.transport.close()
        else:
            self.transport.close()


def serve_pynetdicom(ports_queue, count, ready, stop):
    """The tests' pynetdicom SCPs (open and calling-AE whitelist), the same policy mix as the
    asyncio responder, answering C-FIND with no matches, in one process."""
    from pynetdicom.transport import AssociationServer

    # socketserver's default listen backlog is 5; a server facing a scanner would be
    # configured larger, and a full backlog would measure SYN retransmission timers.
    # This process holds only the benchmark's servers, so the class default may change.
    AssociationServer.request_queue_size = 512

    servers = []
    ports = []
    for index in range(count):
        whitelist = index % 2 == 1
        policy = ScpPolicy.CALLING_WHITELIST if whitelist else ScpPolicy.OPEN
        server = start_scp(policy, studies=())
        servers.append(server)
        ports.append((server.server_address[1], whitelist))
    ports_queue.put(ports)
    ready.set()
    stop.wait()
    shutdown_all(servers)


def serve(ports_queue, count, ready, stop):
    # Import the encoders' library before the endpoints are announced: imported on the first
    # association instead, its 0.2 s would be charged to whichever scanner comes first.
    import pynetdicom.pdu  # noqa: F401  pylint: disable=unused-import
    import pynetdicom.dsutils  # noqa: F401  pylint: disable=unused-import

    async def main():
        loop = asyncio.get_running_loop()
        servers = []
        ports = []
        for index in range(count):
            whitelist = index % 2 == 1
            server = await loop.create_server(lambda w=whitelist: Responder(w), LOOPBACK, 0, backlog=512)
            servers.append(server)
            ports.append((server.sockets[0].getsockname()[1], whitelist))
        ports_queue.put(ports)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        for server in servers:
            server.close()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------


def run_nmap(ports):
    nmap = shutil.which("nmap")
    if nmap is None:
        return None
    port_list = ",".join(str(p) for p, dummy in ports)
    cmd = [nmap, "-n", "-Pn", "-sT", "-p", port_list, "--script", "+dicom-ping", "-oX", "-", LOOPBACK]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    wall = time.perf_counter() - start
    verdicts = {}
    for match in re.finditer(r'<port protocol="tcp" portid="(\d+)">(.*?)</port>', proc.stdout, re.S):
        port, body = int(match.group(1)), match.group(2)
        if "Any AET is accepted" in body:
            verdicts[port] = "open"
        elif "Called AET check enabled" in body:
            verdicts[port] = "restricted"
        else:
            verdicts[port] = "unknown"
    return wall, verdicts


AUDIT_CHILD = r"""
import json, sys, time
start = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_audit
config = json.loads(sys.argv[2])
reports, summary = dicom_audit.audit(config)
verdicts = {}
matrix = {}
for r in reports:
    f = {x["id"]: x for x in r["findings"]}
    # An endpoint with no conclusive answer has no any_ae finding: neither kind.
    verdicts[r["port"]] = "unknown" if "any_ae" not in f else "open" if not f["any_ae"]["passed"] else "restricted"
    matrix[r["port"]] = {x["id"]: x["passed"] for x in r["findings"]}
print(json.dumps({"summary": summary, "verdicts": verdicts, "matrix": matrix, "process_s": time.perf_counter() - start}))
"""

# What every check must say about each kind of endpoint (both responders behave alike):
# neither checks the called AE, user identity or passcodes, nor sends an identity response,
# and both answer C-FIND with success to whoever is associated.  Only the calling-AE
# whitelist differs, so only any_ae and cfind_exposure tell the two kinds apart.
EXPECTED_MATRIX = {
    "open": dict(any_ae=False, called_ae_guess=False, no_identity=False, wrong_passcode=False,
                 identity_ignored=False, cfind_exposure=False, authorized=True),
    "restricted": dict(any_ae=True, called_ae_guess=False, no_identity=False, wrong_passcode=False,
                       identity_ignored=False, cfind_exposure=True, authorized=True),
}


def run_audit(ports, concurrency, timeout):
    config = {
        "endpoints": [{"name": str(p), "host": LOOPBACK, "port": p, "called_ae": "ANY-SCP"} for p, dummy in ports],
        "calling_ae": "CT01",
        "identity": {"type": "username_passcode", "username": "ct01", "passcode": "benchmark-only"},
        "concurrency": concurrency,
        # Every loopback endpoint stands for a host of its own; on one address the per-host
        # bound would otherwise serialise them.
        "per_host_concurrency": concurrency,
        "timeout": timeout,
        "fail_on": "never",
        # The checks nmap's comparison was made with; the responders answer no C-GET or C-MOVE.
        "checks": list(EXPECTED_MATRIX["open"]),
    }
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", AUDIT_CHILD, collections_path(), json.dumps(config)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    data = json.loads(proc.stdout)
    return wall, data


def latency(ports, samples):
    sys.path.insert(0, collections_path())
    from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_probe

    port = next(p for p, whitelist in ports if not whitelist)
    tcp = []
    for dummy in range(samples):
        start = time.perf_counter()
        with socket.create_connection((LOOPBACK, port)) as sock:
            tcp.append((time.perf_counter() - start) * 1000)
            sock.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")

    assoc = []
    for dummy in range(samples):
        result = dicom_probe.probe(
            dict(host=LOOPBACK, port=port, called_ae="ANY-SCP", calling_ae="CT01", timeout=5, dimse="none")
        )
        assoc.append((result["latency_ms"], result["elapsed_ms"]))
    return statistics.median(tcp), statistics.median(a for a, dummy in assoc), statistics.median(e for dummy, e in assoc)


def one_round(ports, truth, args, nmap_first):
    """nmap and the audit once each, back to back; return (audit wall, checks per endpoint, nmap wall)."""
    nmap = None
    if nmap_first:
        nmap = run_nmap(ports)
    audit_wall, audit = run_audit(ports, args.concurrency, args.timeout)
    if not nmap_first:
        nmap = run_nmap(ports)
    summary = audit["summary"]
    checks_per_endpoint = summary["checks"] / summary["endpoints"]
    print("dicom_audit: %.3f s whole process, %.3f s scan; %d checks (%.1f per endpoint), %d associations" % (
        audit_wall, summary["elapsed_ms"] / 1000, summary["checks"], checks_per_endpoint, summary["associations"]))
    audit_verdicts = {int(k): v for k, v in audit["verdicts"].items()}
    print("dicom_audit any_ae verdicts right: %d/%d" % (
        sum(audit_verdicts.get(p) == v for p, v in truth.items()), len(truth)))
    matrix = {int(k): v for k, v in audit["matrix"].items()}
    right = sum(
        matrix.get(p, {}).get(check) is passed
        for p, kind in truth.items() for check, passed in EXPECTED_MATRIX[kind].items()
    )
    print("dicom_audit verdicts right, every check: %d/%d" % (
        right, sum(len(EXPECTED_MATRIX[kind]) for kind in truth.values())))
    if nmap is None:
        print("nmap: not installed, comparison skipped")
        return audit_wall, checks_per_endpoint, None
    nmap_wall, nmap_verdicts = nmap
    agree = sum(nmap_verdicts.get(p) == audit_verdicts.get(p) for p in truth)
    print("nmap dicom-ping: %.3f s whole process, 1 check per endpoint" % nmap_wall)
    print("nmap verdicts right: %d/%d; agreement with dicom_audit any_ae: %d/%d" % (
        sum(nmap_verdicts.get(p) == v for p, v in truth.items()), len(truth), agree, len(truth)))
    print_ratio("wall time ratio dicom_audit/nmap (whole process)", audit_wall, nmap_wall, checks_per_endpoint)
    return audit_wall, checks_per_endpoint, nmap_wall


def print_ratio(label, audit_wall, nmap_wall, checks_per_endpoint):
    print("%s: %.2f; per check: %.3f (%.1fx nmap's speed)" % (
        label, audit_wall / nmap_wall, audit_wall / nmap_wall / checks_per_endpoint,
        nmap_wall * checks_per_endpoint / audit_wall))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--endpoints", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=5)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--responder", choices=["asyncio", "pynetdicom"], default="asyncio")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="measure the very first run of each scanner too")
    args = parser.parse_args()

    target = serve if args.responder == "asyncio" else serve_pynetdicom
    queue, ready, stop = multiprocessing.Queue(), multiprocessing.Event(), multiprocessing.Event()
    server = multiprocessing.Process(target=target, args=(queue, args.endpoints, ready, stop), daemon=True)
    server.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("endpoints did not start")
        ports = queue.get(timeout=5)
        truth = {p: ("restricted" if whitelist else "open") for p, whitelist in ports}
        print("endpoints: %d (%d open, %d calling-AE whitelist), %s responder, %d round(s)" % (
            len(ports), sum(1 for v in truth.values() if v == "open"), sum(1 for v in truth.values() if v != "open"),
            args.responder, args.rounds))
        if args.warmup:
            # Untimed: the first run of each scanner pays for cold file caches and the
            # responder's first answers of each kind; neither belongs to the comparison.
            run_nmap(ports)
            run_audit(ports, args.concurrency, args.timeout)
        rounds = []
        for index in range(max(1, args.rounds)):
            if args.rounds > 1:
                print("-- round %d (%s first)" % (index + 1, "nmap" if index % 2 == 0 else "dicom_audit"))
            rounds.append(one_round(ports, truth, args, nmap_first=index % 2 == 0))
        if len(rounds) > 1 and rounds[0][2] is not None:
            audit_median = statistics.median(r[0] for r in rounds)
            nmap_median = statistics.median(r[2] for r in rounds)
            ratios = sorted(r[0] / r[2] for r in rounds)
            print("-- medians of %d rounds: dicom_audit %.3f s, nmap %.3f s" % (len(rounds), audit_median, nmap_median))
            ratio = statistics.median(ratios)
            print("median per-round ratio dicom_audit/nmap: %.2f; per check: %.3f (%.1fx nmap's speed)" % (
                ratio, ratio / rounds[0][1], rounds[0][1] / ratio))
            print("per-round ratios: %s" % ", ".join("%.2f" % r for r in ratios))
        tcp_ms, assoc_ms, total_ms = latency(ports, args.samples)
        print("latency (median of %d, sequential): TCP connect %.3f ms; association answer %.3f ms (%.1fx); "
              "whole probe incl. release %.3f ms" % (args.samples, tcp_ms, assoc_ms, assoc_ms / tcp_ms, total_ms))
    finally:
        stop.set()
        server.join(10)
        if server.is_alive():
            server.terminate()
            server.join(5)


if __name__ == "__main__":
    main()
