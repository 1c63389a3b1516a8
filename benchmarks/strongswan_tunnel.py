# -*- coding: utf-8 -*-
"""strongswan_tunnel: C-STORE through the tunnel against the tunnel's own TCP capacity and the clear path.

Runs on the lab hosts of the molecule scenario ``strongswan_tunnel`` (brought up with
``molecule converge -s strongswan_tunnel`` when they are not there, ``--destroy`` removes them
afterwards): the modality on the site LAN, the two gateways with the role's tunnel between them
(userspace ESP, libipsec, since the lab's kernel has no ESP), and Orthanc on the cloud network,
configured by pacs_identity with TCP_NODELAY=1. The build machine's own tools act from a lab
host's network position through ``nsenter -n``, so nothing is installed in the hosts.

In one run, for several rounds in rotating order:

  cstore_tunnel  DCMTK's storescu sends N instances of SIZE KB in one association from the
                 modality to Orthanc, through the tunnel (MB/s of pixel data, storescu's wall time);
  tcp_tunnel     one bulk TCP stream of the same number of bytes from the modality to a sink in
                 the PACS's network position, through the same tunnel (the tunnel's own capacity);
  tcp_clear      the same stream between the two gateways' WAN addresses, the link the tunnel's
                 outer packets ride, in the clear (the path without IPsec).

It prints every figure, the medians and the ratios, and whether the goal (C-STORE at least
0.9 of the tunnel's own TCP capacity) is met.

To explain the figures it also measures one round trip through the tunnel (TCP connects from the
modality to the PACS's REST port: storescu pays one per instance, waiting for each response) and,
around every transfer, the CPU seconds per MB of the processes that carry it (charon on each
gateway and Orthanc, from /proc of their host PIDs; the client, from this process's children) and
the share of the machine's CPU that was busy: a CPU-bound run shows it.

Each round runs the three under every placement asked for (``--placement``, by default both):

  shared         every lab host and the benchmark's own processes on all of the machine's cores;
  gateway-cores  the two gateways (both charons) on core 0, the modality, the PACS and the
                 benchmark's processes (storescu, the bulk source and sink) on the other cores,
                 as in a site where the IPsec gateways are hosts of their own: the endpoints'
                 CPU no longer competes with the encryption, and both transfers still share
                 one tunnel whose capacity the gateways' core bounds.

Usage: python benchmarks/strongswan_tunnel.py [--instances 100] [--size-kb 512] [--rounds 3]
       [--placement shared,gateway-cores] [--destroy] [--json]
Needs: Docker with the lab image, dcmtk (storescu), nsenter; run as root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from lab_servers import Instances, cpu_seconds  # noqa: E402  (the tests' helpers, one copy)

import yaml  # noqa: E402

SCENARIO = REPO / "molecule" / "strongswan_tunnel"
S = yaml.safe_load((SCENARIO / "vars" / "scenario.yml").read_text())
HOSTS = ("st-modality", "st-site-gw", "st-cloud-gw", "st-pacs")
STORESCU = "/usr/bin/storescu"
SINK_PORT = 5201
GOAL = 0.90

# A sink that reads one connection to its end and prints bytes and seconds from its first byte.
SINK = r"""
import socket, sys, time
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept()
buf = bytearray(1 << 20)
total, start = 0, None
while True:
    n = conn.recv_into(buf)
    if not n:
        break
    if start is None:
        start = time.perf_counter()
    total += n
print(total, time.perf_counter() - start, flush=True)
"""
SOURCE = r"""
import socket, sys
total = int(sys.argv[3])
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
chunk = b"\x5a" * (1 << 20)
sent = 0
while sent < total:
    s.sendall(chunk[: min(len(chunk), total - sent)])
    sent += min(len(chunk), total - sent)
s.shutdown(socket.SHUT_WR)
s.recv(1)
s.close()
"""


def host_pids(name, needle):
    out = subprocess.run(["docker", "top", name, "-eo", "pid,args"], capture_output=True, text=True, check=False).stdout
    return [int(ln.split()[0]) for ln in out.splitlines()[1:] if needle in ln]


def cpu_ticks():
    """CPU seconds so far of each process that carries the traffic, and of the whole machine."""
    hz = os.sysconf("SC_CLK_TCK")
    procs = {"charon_site": host_pids("st-site-gw", "charon"), "charon_cloud": host_pids("st-cloud-gw", "charon"),
             "orthanc": host_pids("st-pacs", "Orthanc")}
    out = {key: cpu_seconds(pids) for key, pids in procs.items()}
    children = os.times()
    out["client"] = children.children_user + children.children_system
    cpu = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    out["machine_busy"] = (sum(cpu) - cpu[3] - cpu[4]) / hz
    out["machine_all"] = sum(cpu) / hz
    return out


def rtt_ms(src, address, port, count=50):
    """Median TCP connect time (one round trip) from lab host src to address:port, in ms."""
    code = ("import socket,sys,time,statistics\nv=[]\nfor _ in range(%d):\n t=time.perf_counter(); "
            "socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5).close(); v.append(time.perf_counter()-t)\n"
            "print(statistics.median(v)*1000)" % count)
    out = subprocess.run(netns(src) + [sys.executable, "-c", code, address, str(port)], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return float(out.strip())


def docker_pid(name):
    out = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", name], capture_output=True, text=True, check=False)
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() not in ("", "0") else None


def netns(name):
    return ["nsenter", "-t", str(docker_pid(name)), "-n"]


def ensure_lab():
    if all(docker_pid(h) for h in HOSTS):
        return False
    env = dict(os.environ, PATH="%s:%s" % (REPO / ".venv" / "bin", os.environ.get("PATH", "")),
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    print("bringing up the strongswan_tunnel lab hosts (molecule converge)...", flush=True)
    subprocess.run(["molecule", "converge", "-s", "strongswan_tunnel"], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return True


PLACEMENTS = ("shared", "gateway-cores")
GATEWAYS = ("st-site-gw", "st-cloud-gw")
ENDPOINTS = ("st-modality", "st-pacs")


def place(placement):
    """Pin the lab hosts (docker's cpuset) and this process with its children to ``placement``."""
    ncpu = os.cpu_count() or 1
    everything = "0-%d" % (ncpu - 1)
    if placement == "gateway-cores":
        gateway_cpus, endpoint_cpus = "0", "1-%d" % (ncpu - 1)
    else:
        gateway_cpus = endpoint_cpus = everything
    for names, cpus in ((GATEWAYS, gateway_cpus), (ENDPOINTS, endpoint_cpus)):
        subprocess.run(["docker", "update", "--cpuset-cpus", cpus, *names], check=True, stdout=subprocess.DEVNULL)
    first, last = (int(v) for v in (endpoint_cpus.split("-") + [endpoint_cpus])[:2])
    os.sched_setaffinity(0, range(first, last + 1))


def tunnel_up():
    out = subprocess.run(["docker", "exec", "st-site-gw", "swanctl", "--list-sas", "--ike", S["scenario_tunnel"]],
                         capture_output=True, text=True, check=False).stdout
    return "INSTALLED" in out


def bulk_tcp(src, dst, dst_address, nbytes):
    """MB/s of one TCP stream from lab host src to a sink in dst's network position."""
    sink = subprocess.Popen(netns(dst) + [sys.executable, "-c", SINK, dst_address, str(SINK_PORT)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        subprocess.run(netns(src) + [sys.executable, "-c", SOURCE, dst_address, str(SINK_PORT), str(nbytes)],
                       check=True, timeout=300)
        total, seconds = sink.stdout.readline().split()
        sink.wait(timeout=30)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    if int(total) != nbytes:
        raise RuntimeError("the sink received %s of %d bytes" % (total, nbytes))
    return nbytes / 1e6 / float(seconds)


def cstore(instances, options=()):
    """MB/s of pixel data: storescu's wall time for all instances in one association, through the tunnel."""
    instances.refresh()
    cmd = netns("st-modality") + [STORESCU, *options, "-aet", S["scenario_modality_aet"], "-aec", S["scenario_pacs_aet"],
                                  S["scenario_pacs"], str(S["scenario_dicom_port"]), *map(str, instances.files)]
    env = dict(os.environ, TCP_NODELAY="1")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or "Store Failed" in proc.stderr or "E:" in proc.stderr:
        raise RuntimeError("storescu failed: %s" % (proc.stdout + proc.stderr).strip()[-800:])
    return instances.pixel_bytes / 1e6 / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--size-kb", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--placement", default=",".join(PLACEMENTS),
                        help="comma-separated: %s (default: both, side by side in each round)" % ", ".join(PLACEMENTS))
    parser.add_argument("--destroy", action="store_true", help="remove the lab hosts afterwards")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    placements = [p for p in args.placement.split(",") if p]
    if not placements or any(p not in PLACEMENTS for p in placements):
        sys.exit("--placement takes %s" % ", ".join(PLACEMENTS))
    if "gateway-cores" in placements and (os.cpu_count() or 1) < 2:
        sys.exit("--placement gateway-cores needs at least two cores")
    if os.geteuid() != 0 or not shutil.which("nsenter") or not os.path.exists(STORESCU):
        sys.exit("needs root, nsenter and DCMTK's storescu")

    created = ensure_lab()
    work = Path(tempfile.mkdtemp(prefix="strongswan-tunnel-bench-"))
    transfers = ("cstore_tunnel", "tcp_tunnel", "tcp_clear")
    figures = {p: {name: [] for name in transfers} for p in placements}
    cpu = {p: {name: [] for name in transfers} for p in placements}
    try:
        deadline = time.monotonic() + 60
        while not tunnel_up():
            if time.monotonic() > deadline:
                sys.exit("the tunnel's CHILD_SA is not installed")
            time.sleep(1)
        instances = Instances(work / "instances", args.instances, args.size_kb)
        nbytes = instances.pixel_bytes
        runs = {
            "cstore_tunnel": lambda: cstore(instances),
            "tcp_tunnel": lambda: bulk_tcp("st-modality", "st-pacs", S["scenario_pacs"], nbytes),
            "tcp_clear": lambda: bulk_tcp("st-site-gw", "st-cloud-gw", S["scenario_cloud_gw_wan"], nbytes),
        }
        names = list(runs)
        # Once untimed: Orthanc's first store and cold caches are not what is measured.
        cstore(instances)
        # One round trip through the tunnel (a TCP connect to the PACS's REST port), which
        # every C-STORE pays once: storescu waits for each response before the next instance.
        rtt = rtt_ms("st-modality", S["scenario_pacs"], S["scenario_rest_port"])
        for r in range(args.rounds):
            for placement in placements:
                place(placement)
                order = names[r % len(names):] + names[:r % len(names)]
                line = []
                for name in order:
                    before = cpu_ticks()
                    value = runs[name]()
                    after = cpu_ticks()
                    figures[placement][name].append(value)
                    mb = nbytes / 1e6
                    cpu[placement][name].append(
                        {k: (after[k] - before[k]) / mb for k in after if not k.startswith("machine")}
                        | {"machine_busy_share": (after["machine_busy"] - before["machine_busy"])
                           / max(after["machine_all"] - before["machine_all"], 1e-9)})
                    line.append("%s %.1f MB/s" % (name, value))
                print("round %d, %s: %s" % (r + 1, placement, ", ".join(line)), flush=True)
    finally:
        if any(docker_pid(h) for h in HOSTS):
            place("shared")
        shutil.rmtree(work, ignore_errors=True)
        if args.destroy or created:
            if args.destroy:
                env = dict(os.environ, PATH="%s:%s" % (REPO / ".venv" / "bin", os.environ.get("PATH", "")),
                           ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
                subprocess.run(["molecule", "destroy", "-s", "strongswan_tunnel"], cwd=REPO, env=env, check=False,
                               stdout=subprocess.DEVNULL)

    result = {
        "conditions": {"instances": args.instances, "size_kb": args.size_kb, "rounds": args.rounds,
                       "backend": "libipsec (userspace ESP, ESP in UDP 4500)", "proposal": "aes256gcm16",
                       "cores": os.cpu_count()},
        "rtt_tunnel_ms": rtt,
        "placements": {p: summarise(figures[p], cpu[p], rtt, args.instances, nbytes) for p in placements},
    }
    result["goal_met"] = {p: r["goal_met"] for p, r in result["placements"].items()}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("round trip through the tunnel %.2f ms" % rtt)
    for placement, res in result["placements"].items():
        med = res["median_mb_per_s"]
        print("\n%s: medians C-STORE through the tunnel %.1f MB/s, bulk TCP through the tunnel %.1f MB/s, "
              "bulk TCP in the clear %.1f MB/s" % (placement, med["cstore_tunnel"], med["tcp_tunnel"], med["tcp_clear"]))
        verdict = "met" if res["goal_met"] else "NOT met"
        print("  C-STORE / tunnel TCP: %.2f (goal >= %.2f: %s)" % (res["cstore_tunnel_over_tcp_tunnel"], GOAL, verdict))
        print("  tunnel TCP / clear TCP: %.3f; C-STORE / clear TCP: %.3f"
              % (res["tcp_tunnel_over_tcp_clear"], res["cstore_tunnel_over_tcp_clear"]))
        print("  %d response waits are %.0f%% of the C-STORE's time" % (args.instances, 100 * res["rtt_share_of_cstore"]))
        for name, row in res["cpu_s_per_mb"].items():
            print("  CPU s/MB %-13s " % name + ", ".join("%s %.4f" % (k, v) for k, v in row.items() if k != "machine_busy_share")
                  + "; machine busy %.0f%% of %d cores" % (100 * row["machine_busy_share"], os.cpu_count()))


def summarise(figures, cpu, rtt, instances, nbytes):
    """Medians, ratios and CPU per MB of one placement's rounds."""
    med = {k: statistics.median(v) for k, v in figures.items()}
    res = {
        "figures_mb_per_s": figures,
        "median_mb_per_s": med,
        "cstore_tunnel_over_tcp_tunnel": med["cstore_tunnel"] / med["tcp_tunnel"],
        "tcp_tunnel_over_tcp_clear": med["tcp_tunnel"] / med["tcp_clear"],
        "cstore_tunnel_over_tcp_clear": med["cstore_tunnel"] / med["tcp_clear"],
        # CPU seconds per MB moved, per process (medians over rounds), and the machine's busy share.
        "cpu_s_per_mb": {name: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for name, rows in cpu.items()},
        # What the response round trips cost: one per instance.
        "rtt_share_of_cstore": (instances * rtt / 1000) / (nbytes / 1e6 / med["cstore_tunnel"]),
    }
    res["goal_met"] = res["cstore_tunnel_over_tcp_tunnel"] >= GOAL
    return res


if __name__ == "__main__":
    main()
