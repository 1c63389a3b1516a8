# -*- coding: utf-8 -*-
"""nginx_stream_proxy's association gate: C-STORE throughput and association setup, side by side.

In one run, against the same upstreams on loopback (Debian's Orthanc configured by
pacs_identity with its TCP_NODELAY=1, and DCMTK's storescp receiving without storing, a
fast test SCP), each path is measured in turn, in rotating order, for several rounds:

  direct       the client speaks to the upstream itself (plain TCP);
  nginx        a plain nginx stream proxy, no TLS (for the decomposition);
  nginx_tls    a plain nginx stream TLS proxy with the role's TLS settings and client
               certificates required (the anchor: what any TLS front end costs);
  gate_plain   the role's gateway, AE gate only, no TLS;
  gate_ae      the role's gateway with TLS: AE gate only (no identity required);
  gate_type2   ... AE gate + user identity type 2 (PBKDF2, the role's default iterations);
  gate_jwt     ... AE gate + JWT (type 5, RS256).

The gateway's configuration is the role's own (gate_lab.render_gateway renders the role's
templates and gate with its defaults); the client certificates come from gate_lab's test PKI.

1. C-STORE throughput: DCMTK's storescu sends N generated instances of SIZE KB in one
   association (whole storescu process wall time, MB/s of pixel data). Every Orthanc run
   gets fresh SOP Instance UIDs, so that Orthanc stores each time.
2. Association setup: a raw client (one socket, hand-built PDUs) times TCP connect and
   TLS handshake (full, no resumption), then A-ASSOCIATE-RQ -> A-ASSOCIATE-AC; medians.
   The type 2 row is repeated with hashes of 10,000 and 600,000 iterations.

It prints the conditions, the raw figures of every round, medians, ratios to direct and
the added milliseconds against direct and against the anchor, and whether the goals are
met. ``--stream-directive`` and ``--drop-directive`` change every proxying server of the
anchor and of the gateway, to measure a knob the template does not have yet.

``--placement gateway-core`` puts nginx (anchor and gateway) on a CPU of its own and the client
and upstreams on the others, as in the documented deployment where the gateway is a host of
its own; the default, ``shared``, lets all of them compete for every CPU, as when the gateway
runs on the PACS's host. Every path of a run has the same placement, so the ratios compare
like with like.

Usage: python benchmarks/nginx_stream_proxy.py [--instances 200] [--size-kb 512] [--rounds 3]
       [--associations 40] [--stream-directive 'proxy_buffer_size 64k'] [--drop-directive js_filter]
       [--placement shared|gateway-core] [--json]
Needs: Debian's nginx, libnginx-mod-stream, libnginx-mod-stream-js, orthanc and dcmtk.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "integration" / "roles" / "nginx_stream_proxy"))
from collections_path import collections_path  # noqa: E402  (the tests' helpers, one copy)
from gate_lab import GatePki, Idp, Nginx, SyslogSink, make_root, nginx_missing, render_gateway, write_main_conf  # noqa: E402
from lab_servers import (  # noqa: E402
    LOOPBACK, Instances, Orthanc, Unavailable, cpu_seconds, free_port, read_pdu, stop_process, wait_port)

sys.path.insert(0, collections_path())
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_pdu  # noqa: E402

PACS_AET = "BENCHPACS"
CLIENT_AET = "BENCHSCU"
MODALITIES = [{"name": "bench", "aet": CLIENT_AET, "host": LOOPBACK, "allow": ["echo", "store"]}]
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ROLE_DEFAULTS = REPO / "roles" / "nginx_stream_proxy" / "defaults" / "main.yml"
PATHS = ("direct", "nginx", "nginx_tls", "gate_plain", "gate_ae", "gate_type2", "gate_jwt")
TLS_PATHS = ("nginx_tls", "gate_ae", "gate_type2", "gate_jwt")
GATE_PATHS = ("gate_plain", "gate_ae", "gate_type2", "gate_jwt")
UPSTREAMS = ("orthanc", "storescp")
# Synthetic credentials; the hashes for the iteration sweep are made here in the role's format.
USERS = {"bench": "Bench-Passcode-100k-3Rt", "bench10k": "Bench-Passcode-10k-8Wm",
         "bench600k": "Bench-Passcode-600k-5Kq"}
JWT_USER = "benchjwt"
THROUGHPUT_GOAL = 0.90
SETUP_GOAL_MS = 2.0


def pbkdf2_hash(passcode, iterations):
    salt = os.urandom(16)
    key = hashlib.pbkdf2_hmac("sha256", passcode.encode(), salt, iterations, 32)
    return "pbkdf2-sha256$%d$%s$%s" % (iterations, base64.b64encode(salt).decode(), base64.b64encode(key).decode())


# ---------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------


class Storescp:
    """DCMTK's storescp, receiving and discarding (--ignore), with Nagle off as Orthanc has it."""

    def __init__(self, root):
        self.port = free_port()
        self.log = open(Path(root) / "storescp.log", "wb")
        env = dict(os.environ, TCP_NODELAY="1")
        self.proc = subprocess.Popen([STORESCP, "--ignore", "-dhl", "-aet", PACS_AET, str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_port(self.port, proc=self.proc)

    def stop(self):
        stop_process(self.proc)
        self.log.close()


def role_tls_settings():
    import yaml

    defaults = yaml.safe_load(ROLE_DEFAULTS.read_text())
    return " ".join(defaults["nginx_stream_proxy_tls_protocols"]), defaults["nginx_stream_proxy_tls_ciphers"]


def anchor_conf(pki, ports, upstream_ports):
    """A plain nginx stream proxy, and the same with TLS as the role configures a listener's TLS."""
    protocols, ciphers = role_tls_settings()
    servers = []
    for name in UPSTREAMS:
        up = "%s:%d" % (LOOPBACK, upstream_ports[name])
        servers.append("""    server {
        listen %s:%d;
        proxy_pass %s;
    }""" % (LOOPBACK, ports[("nginx", name)], up))
        servers.append("""    server {
        listen %s:%d ssl;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols %s;
        ssl_ciphers %s;
        ssl_prefer_server_ciphers off;
        ssl_session_cache shared:anchor_%s:10m;
        ssl_session_tickets off;
        ssl_client_certificate %s;
        ssl_verify_client on;
        proxy_pass %s;
    }""" % (LOOPBACK, ports[("nginx_tls", name)], pki.path("server.pem"), pki.path("server.key"), protocols, ciphers,
            name, pki.path("ca.pem"), up))
    return "stream {\n%s\n}\n" % "\n".join(servers)


def gateway_vars(root, pki, idp, ports, upstream_ports):
    tls = {"certificate": pki.path("server.pem"), "key": pki.path("server.key")}
    certs = {"ca": pki.path("ca.pem"), "mode": "required"}
    listeners = []
    for name in UPSTREAMS:
        up = {"host": LOOPBACK, "port": upstream_ports[name]}
        common = {"addresses": [LOOPBACK], "called_aes": [PACS_AET], "calling_aes": [CLIENT_AET], "upstream": up,
                  "max_connections_per_source": 64}
        listeners += [
            dict(common, name="plain_" + name, port=ports[("gate_plain", name)], identity={"required": False}),
            dict(common, name="ae_" + name, port=ports[("gate_ae", name)], identity={"required": False}, tls=tls,
                 client_certificate=certs),
            dict(common, name="type2_" + name, port=ports[("gate_type2", name)],
                 identity={"types": ["username_passcode"]}, tls=tls, client_certificate=certs),
            dict(common, name="jwt_" + name, port=ports[("gate_jwt", name)], identity={"types": ["jwt"]}, tls=tls,
                 client_certificate=certs),
        ]
    return {
        "nginx_stream_proxy_listeners": listeners,
        "nginx_stream_proxy_modalities": [{"ae": CLIENT_AET, "sources": ["127.0.0.1/32"]}],
        "nginx_stream_proxy_users": [
            # Hashed by the role at its default iterations.
            {"name": "bench", "passcode": USERS["bench"], "calling_aes": [CLIENT_AET]},
            {"name": "bench10k", "passcode_hash": pbkdf2_hash(USERS["bench10k"], 10000), "calling_aes": [CLIENT_AET]},
            {"name": "bench600k", "passcode_hash": pbkdf2_hash(USERS["bench600k"], 600000),
             "calling_aes": [CLIENT_AET]},
            {"name": JWT_USER, "calling_aes": [CLIENT_AET]},
        ],
        "nginx_stream_proxy_jwt": {"issuer": Idp.ISSUER, "audience": Idp.AUDIENCE, "jwks": idp.jwks()},
        "nginx_stream_proxy_gate_dir": str(root / "gate"),
        "nginx_stream_proxy_run_dir": str(root / "run"),
        "nginx_stream_proxy_log_file": str(root / "decisions.log"),
        # As the role's default sends it to the journal: here to a socket of the run's own.
        "nginx_stream_proxy_syslog": {"server": "unix:" + str(root / "journal.sock"), "tag": "dicom_gate"},
    }


def adjust(conf_path, add, drop):
    """Add directives to, and drop directives from, every server that proxies (investigation)."""
    text = Path(conf_path).read_text()
    for name in drop:
        text = re.sub(r"(?m)^\s*%s\s[^;]*;\n" % re.escape(name), "", text)
    if add:
        extra = "".join("        %s;\n" % d.rstrip(";") for d in add)
        text = re.sub(r"(?m)^(\s*proxy_pass [^;]*;\n)", lambda m: m.group(1) + extra, text)
    Path(conf_path).write_text(text)


# ---------------------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------------------


def storescu_args(path, pki, token_file):
    args = []
    if path in TLS_PATHS:
        args += ["+tls", pki.path("ct01.key"), pki.path("ct01.pem"), "+cf", pki.path("ca.pem")]
    if path == "gate_type2":
        args += ["-usr", "bench", "-pwd", USERS["bench"]]
    if path == "gate_jwt":
        args += ["--jwt", str(token_file)]
    return args


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_store(port, path, instances, pki, token_file, client_nagle=False, proxy_pids=(), upstream_pids=()):
    """MB/s of pixel data, and the CPU seconds storescu, nginx's workers and the upstream spent on it:
    CPU time, unlike wall time, is not stretched by other work sharing the cores."""
    cmd = [STORESCU, "-aet", CLIENT_AET, "-aec", PACS_AET, *storescu_args(path, pki, token_file), LOOPBACK, str(port),
           *map(str, instances.files)]
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if not client_nagle:
        # DCMTK leaves Nagle's algorithm on unless told: direct to a server the client's own
        # small writes would then wait for delayed ACKs, which a proxy's socket hides.
        env["TCP_NODELAY"] = "1"
    before = (children_cpu(), cpu_seconds(proxy_pids), cpu_seconds(upstream_pids))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    elapsed = time.perf_counter() - start
    after = (children_cpu(), cpu_seconds(proxy_pids), cpu_seconds(upstream_pids))
    # storescu reports a refused store as a warning and may still exit 0.
    if proc.returncode != 0 or "Store Failed" in proc.stderr or "E:" in proc.stderr:
        raise RuntimeError("storescu via %s failed: %s" % (path, (proc.stdout + proc.stderr).strip()[-800:]))
    megabytes = instances.pixel_bytes / 1e6
    client, proxy, upstream = ((a - b) * 1e3 / megabytes for a, b in zip(after, before))
    return {"mb_per_s": megabytes / elapsed, "client_cpu_ms_per_mb": client, "proxy_cpu_ms_per_mb": proxy,
            "upstream_cpu_ms_per_mb": upstream}


def client_context(pki):
    context = ssl.create_default_context(cafile=pki.path("ca.pem"))
    context.load_cert_chain(pki.path("ct01.pem"), pki.path("ct01.key"))
    return context


def request_for(path, user, token):
    identity = None
    if path == "gate_type2":
        identity = {"type": "username_passcode", "username": user, "passcode": USERS[user]}
    elif path == "gate_jwt":
        identity = {"type": "jwt", "token": token}
    return dicom_pdu.build_associate_rq(PACS_AET, CLIENT_AET, "echo", identity=identity)


def measure_setup(port, path, count, context, user="bench", token=None):
    request = request_for(path, user, token)
    release = dicom_pdu.release_rq_bytes()
    connect, associate = [], []
    for _attempt in range(count):
        t0 = time.perf_counter()
        raw = socket.create_connection((LOOPBACK, port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = context.wrap_socket(raw, server_hostname="localhost") if path in TLS_PATHS else raw
        try:
            t1 = time.perf_counter()
            sock.sendall(request)
            answer = read_pdu(sock)
            t2 = time.perf_counter()
            if answer != 0x02:
                raise RuntimeError("association via %s not accepted (PDU type 0x%02x)" % (path, answer))
            sock.sendall(release)
            if read_pdu(sock) != 0x06:
                raise RuntimeError("no A-RELEASE-RP via %s" % path)
        finally:
            sock.close()
        connect.append((t1 - t0) * 1e3)
        associate.append((t2 - t1) * 1e3)
    return {"connect_ms": statistics.median(connect), "associate_ms": statistics.median(associate),
            "setup_ms": statistics.median([c + a for c, a in zip(connect, associate)])}


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def pin(pid, cpus):
    """Put every thread of a running process on these CPUs."""
    for task in os.listdir("/proc/%d/task" % pid):
        os.sched_setaffinity(int(task), cpus)


def placement_cpus(placement):
    """(CPUs for the client and the upstreams, CPUs for nginx) or None when everything shares."""
    if placement == "shared":
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("--placement gateway-core needs at least two CPUs; this process may use %d" % len(cpus))
    return set(cpus[:-1]), {cpus[-1]}


def run(args):
    missing = nginx_missing() + [p for p in (STORESCU, STORESCP) if not os.path.exists(p)]
    try:
        Orthanc.binary()
    except Unavailable:
        missing.append("Orthanc")
    if missing:
        sys.exit("missing %s: install Debian's nginx, libnginx-mod-stream, libnginx-mod-stream-js, orthanc, dcmtk"
                 % ", ".join(missing))
    cpus = placement_cpus(args.placement)
    if cpus is not None:
        # Inherited by every process started from here on: storescu, Orthanc, storescp.
        os.sched_setaffinity(0, cpus[0])
    work = Path(tempfile.mkdtemp(prefix="gate-bench-"))
    work.chmod(0o755)
    started = []
    try:
        (work / "pki").mkdir()
        pki = GatePki(work / "pki")
        idp = Idp()
        token = idp.token(sub=JWT_USER, exp=int(time.time()) + 24 * 3600)
        token_file = work / "token.jwt"
        token_file.write_text(token)
        instances = Instances(work / "instances", args.instances, args.size_kb)
        orthanc = Orthanc(work / "orthanc", modalities=MODALITIES, aet=PACS_AET, tcp_nodelay=True).start()
        started.append(orthanc)
        storescp = Storescp(work)
        started.append(storescp)
        upstream_ports = {"orthanc": orthanc.dicom_port, "storescp": storescp.port}
        upstream_pids = {"orthanc": [orthanc.proc.pid], "storescp": [storescp.proc.pid]}
        ports = {(path, name): free_port() for path in PATHS[1:] for name in UPSTREAMS}
        ports.update({("direct", name): upstream_ports[name] for name in UPSTREAMS})

        anchor_root = make_root()
        started.append(anchor_root)
        (anchor_root / "stream.conf").write_text(anchor_conf(pki, ports, upstream_ports))
        adjust(anchor_root / "stream.conf", args.stream_directive, args.drop_directive)
        write_main_conf(anchor_root)
        anchor = Nginx(anchor_root)
        gate_root = make_root()
        started.append(gate_root)
        render_gateway(gate_root, gateway_vars(gate_root, pki, idp, ports, upstream_ports))
        (gate_root / "run").chmod(0o755)
        adjust(gate_root / "stream.conf", args.stream_directive, args.drop_directive)
        sink = SyslogSink(gate_root / "journal.sock")
        started.append(sink)
        gate = Nginx(gate_root)
        anchor.start([ports[(p, n)] for p in ("nginx", "nginx_tls") for n in UPSTREAMS])
        started.append(anchor)
        gate.start([ports[(p, n)] for p in GATE_PATHS for n in UPSTREAMS])
        started.append(gate)
        if cpus is not None:
            for server in (anchor, gate):
                for pid in [server.proc.pid] + server.worker_pids():
                    pin(pid, cpus[1])
        context = client_context(pki)

        store = {(p, n): [] for p in PATHS for n in UPSTREAMS}
        setup = {(p, n): [] for p in PATHS + ("gate_type2@10k", "gate_type2@600k") for n in UPSTREAMS}
        # Untimed: file caches, Orthanc's first index writes, nginx's first sessions.
        for name in UPSTREAMS:
            for path in PATHS:
                measure_setup(ports[(path, name)], path, 2, context, token=token)
            measure_store(ports[("direct", name)], "direct", instances, pki, token_file)
            instances.refresh()
        for round_number in range(args.rounds):
            order = PATHS[round_number % len(PATHS):] + PATHS[:round_number % len(PATHS)]
            for name in UPSTREAMS:
                for path in order:
                    proxies = anchor.worker_pids() if path.startswith("nginx") else gate.worker_pids()
                    store[(path, name)].append(measure_store(
                        ports[(path, name)], path, instances, pki, token_file, args.client_nagle,
                        proxy_pids=proxies if path != "direct" else (), upstream_pids=upstream_pids[name]))
                    if name == "orthanc":
                        instances.refresh()
                for path in order:
                    setup[(path, name)].append(measure_setup(ports[(path, name)], path, args.associations, context,
                                                             token=token))
                port = ports[("gate_type2", name)]
                setup[("gate_type2@10k", name)].append(
                    measure_setup(port, "gate_type2", args.associations, context, user="bench10k"))
                setup[("gate_type2@600k", name)].append(
                    measure_setup(port, "gate_type2", max(5, args.associations // 8), context, user="bench600k"))
            print("round %d of %d done" % (round_number + 1, args.rounds), file=sys.stderr)
        decisions = (gate_root / "decisions.log").read_text().splitlines()
        tls_versions = sorted({json.loads(line)["tls_version"] for line in decisions if line.strip()} - {""})
        return {"store": store, "setup": setup, "tls_versions": tls_versions,
                "nginx_errors": [line for line in gate.error_log().splitlines() + anchor.error_log().splitlines()
                                 if "[alert]" in line or "[crit]" in line or "[emerg]" in line]}
    finally:
        for item in reversed(started):
            if isinstance(item, Path):
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.stop()
        shutil.rmtree(work, ignore_errors=True)


def summarize(res):
    out = {}
    for name in UPSTREAMS:
        direct_mb = statistics.median(r["mb_per_s"] for r in res["store"][("direct", name)])
        direct_setup = statistics.median(s["setup_ms"] for s in res["setup"][("direct", name)])
        anchor_setup = statistics.median(s["setup_ms"] for s in res["setup"][("nginx_tls", name)])
        rows = {}
        for key in res["setup"]:
            if key[1] != name:
                continue
            path = key[0]
            setups = res["setup"][key]
            row = {"connect_ms": statistics.median(s["connect_ms"] for s in setups),
                   "associate_ms": statistics.median(s["associate_ms"] for s in setups),
                   "setup_ms": statistics.median(s["setup_ms"] for s in setups),
                   "setup_rounds_ms": [round(s["setup_ms"], 3) for s in setups]}
            row["added_vs_direct_ms"] = row["setup_ms"] - direct_setup
            behind_tls_gate = path.startswith("gate") and path != "gate_plain"
            row["added_vs_anchor_ms"] = row["setup_ms"] - anchor_setup if behind_tls_gate else None
            if (path, name) in res["store"]:
                runs = res["store"][(path, name)]
                row["mb_per_s"] = statistics.median(r["mb_per_s"] for r in runs)
                row["mb_per_s_rounds"] = [round(r["mb_per_s"], 1) for r in runs]
                for part in ("client", "proxy", "upstream"):
                    key = part + "_cpu_ms_per_mb"
                    row[key] = statistics.median(r[key] for r in runs)
                # Each round's ratio is taken against the direct run of the same round (the same
                # minutes, the same load from elsewhere), then the median of those.
                direct_runs = res["store"][("direct", name)]
                row["throughput_ratio"] = statistics.median(
                    r["mb_per_s"] / d["mb_per_s"] for r, d in zip(runs, direct_runs))
                row["ratio_of_medians"] = row["mb_per_s"] / direct_mb
            rows[path] = row
        out[name] = rows
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--instances", type=int, default=200, help="instances per C-STORE run (default 200)")
    parser.add_argument("--size-kb", type=int, default=512, help="pixel data per instance in KB (default 512)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every path (default 3); medians")
    parser.add_argument("--associations", type=int, default=40, help="associations timed per path per round")
    parser.add_argument("--stream-directive", action="append", default=[],
                        help="add this directive to every proxying server of the anchor and the gateway")
    parser.add_argument("--drop-directive", action="append", default=[],
                        help="remove this directive (e.g. js_filter) from the anchor's and the gateway's servers")
    parser.add_argument("--client-nagle", action="store_true",
                        help="leave Nagle's algorithm on in storescu (DCMTK's default without TCP_NODELAY=1)")
    parser.add_argument("--placement", choices=("shared", "gateway-core"), default="shared",
                        help="shared: client, nginx and upstreams share every CPU (default); gateway-core: "
                             "nginx on a CPU of its own, as on a gateway host, the client and upstreams on the others")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    res = run(args)
    summary = summarize(res)
    if args.json:
        print(json.dumps({"summary": summary, "tls_versions": res["tls_versions"], "nginx_errors": res["nginx_errors"],
                          "instances": args.instances, "size_kb": args.size_kb, "rounds": args.rounds,
                          "associations": args.associations, "stream_directive": args.stream_directive,
                          "drop_directive": args.drop_directive, "placement": args.placement,
                          "load_average": os.getloadavg()}, indent=2))
        return
    print("placement: %s" % ("nginx on a CPU of its own, client and upstreams on the others"
                             if args.placement == "gateway-core" else "client, nginx and upstreams share every CPU"))
    print("loopback, 2 workers per nginx; C-STORE %d x %d KB per run (storescu, one association); "
          "%d rounds, paths in rotating order; setup: %d associations per path per round (raw client, full TLS "
          "handshakes), medians; TLS %s; storescu with Nagle %s; load average at the end %.1f"
          % (args.instances, args.size_kb, args.rounds, args.associations, ", ".join(res["tls_versions"]),
             "on" if args.client_nagle else "off (TCP_NODELAY=1)", os.getloadavg()[0]))
    if args.stream_directive or args.drop_directive:
        print("modified servers: added %s; dropped %s" % (args.stream_directive or "nothing",
                                                          args.drop_directive or "nothing"))
    for name, rows in summary.items():
        print("\nupstream: %s" % ("Orthanc (pacs_identity, TCP_NODELAY=1)" if name == "orthanc"
                                  else "storescp --ignore (TCP_NODELAY=1)"))
        print("%-16s %8s %7s  %-20s %8s %8s %8s" % (
            "C-STORE via", "MB/s", "ratio", "MB/s per round", "client", "nginx", "upstream"))
        for path, row in rows.items():
            if "mb_per_s" in row:
                print("%-16s %8.1f %7.3f  %-20s %8.2f %8.2f %8.2f" % (
                    path, row["mb_per_s"], row["throughput_ratio"],
                    ",".join("%.0f" % r for r in row["mb_per_s_rounds"]),
                    row["client_cpu_ms_per_mb"], row["proxy_cpu_ms_per_mb"], row["upstream_cpu_ms_per_mb"]))
        print("%-16s %9s %9s %9s %9s %9s  %s" % (
            "setup via", "connect", "assoc", "setup", "+direct", "+anchor", "setup per round"))
        for path, row in rows.items():
            anchor = "%9.2f" % row["added_vs_anchor_ms"] if row["added_vs_anchor_ms"] is not None else "%9s" % ""
            print("%-16s %9.2f %9.2f %9.2f %9.2f %s  %s" % (
                path, row["connect_ms"], row["associate_ms"], row["setup_ms"], row["added_vs_direct_ms"], anchor,
                ",".join("%.2f" % r for r in row["setup_rounds_ms"])))
    print("\n(client/nginx/upstream: CPU ms per MB of pixel data, medians; setup = connect incl. TLS handshake + "
          "A-ASSOCIATE-RQ -> AC, ms; +direct/+anchor: added ms per association against direct and against the "
          "plain nginx TLS proxy)")
    for name, rows in summary.items():
        ratio = rows["gate_ae"]["throughput_ratio"]
        worst = min(rows[p]["throughput_ratio"] for p in ("gate_ae", "gate_type2", "gate_jwt"))
        if name == "orthanc":
            verdict = "meets" if worst >= THROUGHPUT_GOAL else (
                "AE only meets, not all" if ratio >= THROUGHPUT_GOAL else "misses")
            verdict += " the %.2f goal" % THROUGHPUT_GOAL
        else:
            # The goal is set against the PACS; a server that costs almost nothing shows what
            # the path itself costs.
            verdict = "no goal, the path's own cost"
        print("%s: TLS gate throughput %.3f (AE only), %.3f (worst of the three) of direct: %s; anchor %.3f"
              % (name, ratio, worst, verdict, rows["nginx_tls"]["throughput_ratio"]))
        added = rows["gate_ae"]["added_vs_anchor_ms"]
        print("%s: AE-only gate adds %.2f ms per association over the TLS proxy (%.2f ms over direct): "
              "%s the %.1f ms goal" % (name, added, rows["gate_ae"]["added_vs_direct_ms"],
                                       "meets" if added < SETUP_GOAL_MS else "misses", SETUP_GOAL_MS))
    if res["nginx_errors"]:
        print("nginx errors:\n" + "\n".join(res["nginx_errors"][:10]))


if __name__ == "__main__":
    main()
