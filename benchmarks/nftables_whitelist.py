"""Whitelist size vs cost: the nftables_whitelist role against one iptables rule per prefix.

For whitelists of 10, 1,000, 10,000 and 100,000 prefixes this measures, in one run:

- the time the role takes to apply the whitelist (ansible-playbook running the
  role: validation, templating, `nft -c` check, load), and the bare `nft -f`
  load of the file it wrote;
- the same whitelist as one iptables rule per prefix (iptables-nft), loaded
  with iptables-restore;
- the new-connection rate through each filter, from a client whose address is
  the last entry of the whitelist (the worst case for a rule list), for the
  largest whitelist relative to the smallest.

Everything runs in two network namespaces made for the run (198.18.200.0/24)
and removed at the end. Needs root, iproute2, nftables, iptables and the dev
venv (`make setup`).
Usage (as root): .venv/bin/python benchmarks/nftables_whitelist.py [--seconds 2]
"""

import argparse
import ipaddress
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
SIZES = (10, 1_000, 10_000, 100_000)
SRV_NS, CLI_NS = "dsbench-srv", "dsbench-cli"
SRV_IP, CLI_IP = "198.18.200.1", "198.18.200.2"
PORT = 104

SERVER = textwrap.dedent(
    """
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", %d))
    s.listen(4096)
    while True:
        c, _ = s.accept()
        c.close()
    """
    % PORT
)

CLIENT = textwrap.dedent(
    """
    import socket, struct, sys, time
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    linger = struct.pack("ii", 1, 0)
    done, failed, end = 0, 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)  # RST on close: no TIME_WAIT pile-up
        c.settimeout(1)
        try:
            c.connect((host, port))
            done += 1
        except OSError:
            failed += 1
        c.close()
    print(done / (time.perf_counter() - start), failed)
    """
)


def sh(*cmd, ns=None, check=True, **kw):
    if ns:
        cmd = ("ip", "netns", "exec", ns) + cmd
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kw)


def setup_netns():
    teardown_netns()
    for ns in (SRV_NS, CLI_NS):
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
    sh("ip", "link", "add", "dsb0", "netns", SRV_NS, "type", "veth", "peer", "name", "dsb1", "netns", CLI_NS)
    sh("ip", "addr", "add", SRV_IP + "/24", "dev", "dsb0", ns=SRV_NS)
    sh("ip", "addr", "add", CLI_IP + "/24", "dev", "dsb1", ns=CLI_NS)
    sh("ip", "link", "set", "dsb0", "up", ns=SRV_NS)
    sh("ip", "link", "set", "dsb1", "up", ns=CLI_NS)


def teardown_netns():
    for ns in (SRV_NS, CLI_NS):
        sh("ip", "netns", "del", ns, check=False)


def whitelist(n, seed=104):
    """n distinct IPv4 prefixes that cannot merge, the client's address last.

    Every other /28 of 10.0.0.0/8: nothing is adjacent, so neither the role's
    merging nor nft's auto-merge makes the set smaller than the list.
    """
    rnd = random.Random(seed)
    slots = rnd.sample(range(1 << 19), n - 1)
    out = [str(ipaddress.ip_network((10 << 24 | slot << 5, 28))) for slot in slots]
    out.append(CLI_IP)
    return out


def apply_role(workdir, prefixes):
    """Run the role the way a user would, the whitelist coming from the inventory's
    host_vars; returns (wall seconds, rules file)."""
    rules = os.path.join(workdir, "rules")
    inventory = os.path.join(workdir, "inventory")
    os.makedirs(os.path.join(inventory, "host_vars"), exist_ok=True)
    with open(os.path.join(inventory, "hosts"), "w") as f:
        f.write("pacs ansible_connection=local\n")
    # JSON is what an inventory generated from an IP address management system would
    # write; Ansible reads it faster than the same list in YAML.
    with open(os.path.join(inventory, "host_vars", "pacs.json"), "w") as f:
        json.dump({
            "nftables_whitelist_source_sets": {"modalities": prefixes},
            "nftables_whitelist_services": [{"name": "dicom", "ports": [PORT], "sources": ["modalities"]}],
            "nftables_whitelist_management_sources": ["198.18.200.0/24"],
            "nftables_whitelist_persist": False,
            "ansible_python_interpreter": os.path.join(TOP, ".venv", "bin", "python"),
        }, f)
    # Role vars (vars/main.yml) outrank the inventory: only extra vars can point the
    # role's files into the benchmark's own directory instead of /etc and /var/lib.
    overrides = os.path.join(workdir, "overrides.json")
    with open(overrides, "w") as f:
        json.dump({
            "nftables_whitelist_rules_dir": rules,
            "nftables_whitelist_state_dir": os.path.join(workdir, "state"),
        }, f)
    playbook = os.path.join(workdir, "play.yml")
    with open(playbook, "w") as f:
        f.write("- hosts: pacs\n  gather_facts: false\n  roles: [dicomsec.hardening.nftables_whitelist]\n")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(TOP, "ansible.cfg"),
               PATH=os.path.join(TOP, ".venv", "bin") + os.pathsep + os.environ["PATH"])
    start = time.perf_counter()
    res = sh(os.path.join(TOP, ".venv", "bin", "ansible-playbook"), "-i", os.path.join(inventory, "hosts"),
             "-e", "@" + overrides, playbook, ns=SRV_NS, check=False, env=env, cwd=TOP)
    took = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit("role run failed:\n" + res.stdout[-3000:] + res.stderr[-3000:])
    rules_file = os.path.join(rules, "dicomsec.nft")
    if not os.path.exists(rules_file):
        sys.exit("the role did not write %s" % rules_file)
    return took, rules_file


def iptables_rules(prefixes):
    lines = ["*filter", ":INPUT ACCEPT [0:0]"]
    lines += [f"-A INPUT -p tcp --dport {PORT} -s {p} -j ACCEPT" for p in prefixes]
    lines += [f"-A INPUT -p tcp --dport {PORT} -j DROP", "COMMIT", ""]
    return "\n".join(lines)


def conn_rate(seconds):
    res = sh(sys.executable, "-c", CLIENT, SRV_IP, str(PORT), str(seconds), ns=CLI_NS)
    rate, failed = res.stdout.split()
    if int(failed):
        sys.exit(f"{failed} connections failed: the allowed client was refused")
    return float(rate)


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="length of each connection-rate run")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, nft, iptables)")
    for tool in ("ip", "nft", "iptables-restore"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing")

    workdir = tempfile.mkdtemp(prefix="dsbench-")
    setup_netns()
    server = subprocess.Popen(["ip", "netns", "exec", SRV_NS, sys.executable, "-c", SERVER])
    try:
        time.sleep(0.5)
        rows = {}
        for n in SIZES:
            prefixes = whitelist(n)
            role_s, rules_file = apply_role(workdir, prefixes)
            nft_s = timed(lambda: sh("nft", "-f", rules_file, ns=SRV_NS))
            rate_nft = conn_rate(args.seconds) if n in (SIZES[0], SIZES[-1]) else None
            sh("nft", "delete", "table", "inet", "dicomsec", ns=SRV_NS)

            ipt = os.path.join(workdir, "iptables.rules")
            with open(ipt, "w") as f:
                f.write(iptables_rules(prefixes))
            ipt_s = timed(lambda: sh("iptables-restore", ipt, ns=SRV_NS))
            rate_ipt = conn_rate(args.seconds) if n in (SIZES[0], SIZES[-1]) else None
            sh("iptables", "-F", "INPUT", ns=SRV_NS)
            rows[n] = (role_s, nft_s, ipt_s, rate_nft, rate_ipt)
            print(f"{n:>7} prefixes: role apply {role_s:6.2f} s (nft -f alone {nft_s:5.2f} s); "
                  f"iptables-restore {ipt_s:6.2f} s"
                  + (f"; conn/s nft {rate_nft:8.0f}, iptables {rate_ipt:8.0f}" if rate_nft else ""),
                  flush=True)

        small, large = rows[SIZES[0]], rows[SIZES[-1]]
        nft_ratio, ipt_ratio = large[3] / small[3], large[4] / small[4]
        print()
        print(f"connection rate, {SIZES[-1]:,} vs {SIZES[0]} prefixes: role's nft sets {nft_ratio:.3f}; "
              f"iptables one rule per prefix {ipt_ratio:.4f}")
        print(f"role apply at {SIZES[-1]:,} prefixes: {large[0]:.2f} s "
              f"({'within' if large[0] < 10 else 'over'} the 10 s goal); "
              f"rate ratio {'meets' if nft_ratio >= 0.9 else 'misses'} the 0.9 goal")
    finally:
        server.kill()
        server.wait()
        teardown_netns()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
