# -*- coding: utf-8 -*-
"""Orthanc with and without pacs_identity's TCP_NODELAY=1: C-STORE throughput and association setup.

Orthanc's DICOM stack (DCMTK) leaves Nagle's algorithm on unless the environment variable
TCP_NODELAY is set, so every DICOM message can wait for the peer's delayed ACK (~40 ms on
Linux). pacs_identity sets TCP_NODELAY=1 for the service. This benchmark starts Debian's
Orthanc twice on loopback, both configured by the role's own templates and variables (every
DicomAlwaysAllow* false, the called AE checked, the client AE registered with its address),
once with the environment Orthanc has as packaged (pacs_identity_tcp_nodelay false) and
once with the role's (TCP_NODELAY=1), and measures, one run each:

1. C-STORE throughput: DCMTK's storescu sends N generated instances of SIZE KB in one
   association (whole storescu process wall time, MB/s of pixel data);
2. association latency, M times in a row, medians: a raw client (one socket, hand-built
   PDUs, so no client-side library overhead hides the server's stall) timing
   A-ASSOCIATE-RQ -> A-ASSOCIATE-AC and A-RELEASE-RQ -> A-RELEASE-RP; and pynetdicom timing
   a whole association (associate, one C-ECHO, release) as a client application sees it.

It prints each figure for both runs and the ratio tuned/untuned. The A-ASSOCIATE exchange
alone (one PDU each way) is barely affected; the stall hits DIMSE messages, whose command
and data set travel in separate writes. Runs on loopback only.

Usage: python benchmarks/orthanc_tcp_nodelay.py [--instances 200] [--size-kb 512] [--associations 50] [--json]
Needs: Debian's orthanc and dcmtk packages, pydicom and pynetdicom.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from collections_path import collections_path  # noqa: E402  (the tests' helpers, one copy)
from lab_servers import LOOPBACK, Instances, Orthanc, Unavailable, read_pdu  # noqa: E402

sys.path.insert(0, collections_path())
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_pdu  # noqa: E402

PACS_AET = "BENCHPACS"
CLIENT_AET = "BENCHSCU"
# The one modality the role lets in: the benchmark's client, from loopback.
MODALITIES = [{"name": "bench", "aet": CLIENT_AET, "host": LOOPBACK, "allow": ["echo", "store"]}]
# DCMTK's storescu; pynetdicom installs a same-named script that may come first on PATH.
STORESCU = "/usr/bin/storescu"


def measure_store(port: int, files: list[Path], pixel_bytes: int):
    start = time.perf_counter()
    proc = subprocess.run([STORESCU, "-aet", CLIENT_AET, "-aec", PACS_AET, LOOPBACK, str(port), *map(str, files)],
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed: {proc.stderr.strip()[-500:]}")
    return {"seconds": elapsed, "mb_per_s": pixel_bytes / elapsed / 1e6}


def measure_raw_associations(port: int, count: int):
    request = dicom_pdu.build_associate_rq(PACS_AET, CLIENT_AET, "echo")
    release = dicom_pdu.release_rq_bytes()
    setup, teardown = [], []
    for _attempt in range(count):
        with socket.create_connection((LOOPBACK, port)) as sock:
            # The client side never waits on Nagle: only the server's behaviour is timed.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t0 = time.perf_counter()
            sock.sendall(request)
            if read_pdu(sock) != 0x02:
                raise RuntimeError("association not accepted: is the client AE registered?")
            t1 = time.perf_counter()
            sock.sendall(release)
            if read_pdu(sock) != 0x06:
                raise RuntimeError("no A-RELEASE-RP")
            t2 = time.perf_counter()
        setup.append(t1 - t0)
        teardown.append(t2 - t1)
    return {"raw_setup_ms": statistics.median(setup) * 1e3, "raw_release_ms": statistics.median(teardown) * 1e3}


def measure_associations(port: int, count: int):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=CLIENT_AET)
    ae.add_requested_context(Verification)
    whole, echo = [], []
    for _attempt in range(count):
        t0 = time.perf_counter()
        assoc = ae.associate(LOOPBACK, port, ae_title=PACS_AET)
        if not assoc.is_established:
            raise RuntimeError("association refused: is the client AE registered?")
        t1 = time.perf_counter()
        status = assoc.send_c_echo()
        t2 = time.perf_counter()
        if not status or status.Status != 0:
            raise RuntimeError("C-ECHO failed")
        assoc.release()
        t3 = time.perf_counter()
        whole.append(t3 - t0)
        echo.append(t2 - t1)
    return {"pynetdicom_association_ms": statistics.median(whole) * 1e3, "echo_ms": statistics.median(echo) * 1e3}


def run(args):
    missing = [] if os.path.exists(STORESCU) else [STORESCU]
    try:
        Orthanc.binary()
    except Unavailable:
        missing.append("Orthanc")
    if missing:
        sys.exit(f"missing {', '.join(missing)}: install Debian's orthanc and dcmtk")
    work = Path(tempfile.mkdtemp(prefix="orthanc-nodelay-"))
    try:
        data = work / "instances"
        data.mkdir()
        instances = Instances(data, args.instances, args.size_kb)
        pixel_bytes, files = instances.pixel_bytes, instances.files
        results = {}
        for label, nodelay in (("packaged", False), ("tcp_nodelay", True)):
            with Orthanc(work / label, modalities=MODALITIES, aet=PACS_AET, tcp_nodelay=nodelay) as orthanc:
                results[label] = {**measure_store(orthanc.dicom_port, files, pixel_bytes),
                                  **measure_raw_associations(orthanc.dicom_port, args.associations),
                                  **measure_associations(orthanc.dicom_port, args.associations)}
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--instances", type=int, default=200, help="instances per C-STORE run (default 200)")
    parser.add_argument("--size-kb", type=int, default=512, help="pixel data per instance in KB (default 512)")
    parser.add_argument("--associations", type=int, default=50, help="associations timed per run (default 50)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    res = run(args)
    old, new = res["packaged"], res["tcp_nodelay"]
    ratios = {
        "store_throughput": new["mb_per_s"] / old["mb_per_s"],
        "association_setup_speedup": old["raw_setup_ms"] / new["raw_setup_ms"],
        "association_release_speedup": old["raw_release_ms"] / new["raw_release_ms"],
        "pynetdicom_association_speedup": old["pynetdicom_association_ms"] / new["pynetdicom_association_ms"],
        "echo_round_trip_speedup": old["echo_ms"] / new["echo_ms"],
    }
    if args.json:
        print(json.dumps({"runs": res, "ratios": ratios, "instances": args.instances, "size_kb": args.size_kb,
                          "associations": args.associations}, indent=2))
        return
    print(f"Orthanc {PACS_AET} on loopback, one run each; {args.instances} x {args.size_kb} KB C-STORE (storescu), "
          f"{args.associations} associations (pynetdicom, medians)")
    print(f"{'':36}{'as packaged':>10}{'TCP_NODELAY=1':>16}{'ratio':>10}")
    print(f"{'C-STORE throughput (storescu), MB/s':36}{old['mb_per_s']:10.1f}{new['mb_per_s']:16.1f}"
          f"{ratios['store_throughput']:9.1f}x")
    rows = [
        ("association setup (raw), ms", "raw_setup_ms", "association_setup_speedup"),
        ("association release (raw), ms", "raw_release_ms", "association_release_speedup"),
        ("whole association (pynetdicom), ms", "pynetdicom_association_ms", "pynetdicom_association_speedup"),
        ("C-ECHO round trip (pynetdicom), ms", "echo_ms", "echo_round_trip_speedup"),
    ]
    for title, key, ratio in rows:
        print(f"{title:36}{old[key]:10.2f}{new[key]:16.2f}{ratios[ratio]:9.1f}x faster")


if __name__ == "__main__":
    main()
