"""The lab platform works: systemd boots, hosts reach each other, nftables filters.

Every check speaks from a lab host, through molecule's inventory.
"""

import os
import uuid

import pytest
import testinfra

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]

# name -> {network: (ipv4, ipv6)}, as in molecule.yml
ADDRESSES = {
    "lab-gateway": {
        "dicomsec-lan": ("198.18.10.2", "2001:db8:d1c0:10::2"),
        "dicomsec-wan": ("198.18.20.2", "2001:db8:d1c0:20::2"),
    },
    "lab-pacs": {"dicomsec-lan": ("198.18.10.10", "2001:db8:d1c0:10::10")},
    "lab-client": {"dicomsec-wan": ("198.18.20.10", "2001:db8:d1c0:20::10")},
}

# Every pair of hosts that share a network, with that network.
PEERS = [
    (src, dst, net)
    for src, nets in ADDRESSES.items()
    for dst, dst_nets in ADDRESSES.items()
    if src != dst
    for net in nets
    if net in dst_nets
]


def host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


@pytest.mark.parametrize("name", sorted(ADDRESSES))
def test_systemd_is_pid_1_and_finished_booting(name):
    h = host(name)
    assert h.check_output("cat /proc/1/comm") == "systemd"
    state = h.run("systemctl is-system-running").stdout.strip()
    assert state == "running", h.run("systemctl --failed --no-legend").stdout


@pytest.mark.parametrize("name", sorted(ADDRESSES))
def test_host_holds_its_fixed_addresses(name):
    addrs = host(name).check_output("ip -o addr show")
    for v4, v6 in ADDRESSES[name].values():
        assert f" {v4}/24 " in addrs
        assert f" {v6}/64 " in addrs


@pytest.mark.parametrize(("src", "dst", "net"), PEERS)
def test_hosts_on_a_shared_network_reach_each_other_by_name_and_address(src, dst, net):
    h = host(src)
    v4, v6 = ADDRESSES[dst][net]
    # Docker's embedded DNS answers container names on user-defined networks.
    resolved = h.check_output(f"getent ahostsv4 {dst}").split()[0]
    assert resolved in {pair[0] for pair in ADDRESSES[dst].values()}
    assert h.run(f"ping -c1 -W2 {dst}").rc == 0
    assert h.run(f"ping -4 -c1 -W2 {v4}").rc == 0
    assert h.run(f"ping -6 -c1 -W2 {v6}").rc == 0


def test_hosts_without_a_shared_network_cannot_reach_each_other():
    # The client (WAN) and the PACS (LAN) only meet through the gateway, which
    # does not route yet: the lab's segmentation starts out closed.
    client = host("lab-client")
    v4, v6 = ADDRESSES["lab-pacs"]["dicomsec-lan"]
    assert client.run(f"ping -4 -c1 -W1 {v4}").rc != 0
    assert client.run(f"ping -6 -c1 -W1 {v6}").rc != 0


@pytest.mark.parametrize("name", sorted(ADDRESSES))
def test_nftables_filters_traffic_inside_each_host(name):
    """A drop rule in one host stops a peer's packets, and removing it lets them through."""
    h = host(name)
    peer, net = next((d, n) for s, d, n in PEERS if s == name)
    my_v4 = ADDRESSES[name][net][0]
    table = f"labprobe_{uuid.uuid4().hex[:8]}"
    p = host(peer)
    assert p.run(f"ping -4 -c1 -W2 {my_v4}").rc == 0
    h.check_output(
        f"nft 'add table inet {table}; "
        f"add chain inet {table} input {{ type filter hook input priority 0; }}; "
        f"add rule inet {table} input icmp type echo-request counter drop'"
    )
    try:
        assert p.run(f"ping -4 -c1 -W1 {my_v4}").rc != 0
        counters = h.check_output(f"nft list table inet {table}")
        assert "packets 0 " not in counters, counters
    finally:
        h.check_output(f"nft delete table inet {table}")
    assert p.run(f"ping -4 -c1 -W2 {my_v4}").rc == 0


def test_rulesets_are_per_host():
    """A table made in one host does not exist in another: each has its own netns."""
    gw, pacs = host("lab-gateway"), host("lab-pacs")
    table = f"labprobe_{uuid.uuid4().hex[:8]}"
    gw.check_output(f"nft add table inet {table}")
    try:
        assert table in gw.check_output("nft list tables")
        assert table not in pacs.check_output("nft list tables")
    finally:
        gw.check_output(f"nft delete table inet {table}")
