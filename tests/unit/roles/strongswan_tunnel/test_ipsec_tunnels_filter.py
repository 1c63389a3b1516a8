"""The ipsec_tunnels filter: each gateway's view of a tunnel, and the proposal floor, read directly."""

from __future__ import annotations

import pytest

from ansible_collections.dicomsec.hardening.plugins.filter.ipsec_tunnels import ipsec_tunnels, proposal_problem

SITE = {"host": "site-gw", "address": "198.18.20.91", "id": "site.example", "subnets": ["198.18.10.0/24"]}
CLOUD = {"host": "cloud-gw", "address": "198.18.20.93", "subnets": ["198.18.30.0/24", "2001:db8:d1c0:30::/64"]}
TUNNELS = [{"name": "pacs", "gateways": [SITE, CLOUD], "auth": {"method": "psk"}}]
DEFAULTS = {"proposals": ["aes256gcm16-prfsha384-ecp384"], "esp_proposals": ["aes256gcm16"], "rekey_time": "4h",
            "over_time": "30m", "child_rekey_time": "1h", "child_life_time": "66m", "dpd_delay": "10s"}
INVENTORY = ["site-gw", "cloud-gw", "pacs"]


def view(host, tunnels=None):
    return ipsec_tunnels(tunnels or TUNNELS, host=host, inventory=INVENTORY, defaults=DEFAULTS)


def test_each_gateway_sees_itself_as_local_and_the_other_as_remote():
    site, cloud = view("site-gw")["local"][0], view("cloud-gw")["local"][0]
    assert (site["local"]["host"], site["remote"]["host"]) == ("site-gw", "cloud-gw")
    assert (cloud["local"]["host"], cloud["remote"]["host"]) == ("cloud-gw", "site-gw")
    assert site["remote"]["subnets"] == cloud["local"]["subnets"] == ["198.18.30.0/24", "2001:db8:d1c0:30::/64"]
    # Only the first gateway listed says first: both render one secrets section alike.
    assert site["first"] and not cloud["first"]


def test_identity_defaults_to_the_gateway_address():
    assert view("site-gw")["local"][0]["remote"]["id"] == "198.18.20.93"


def test_a_host_that_is_no_gateway_renders_no_tunnel_but_still_sees_the_problems():
    assert view("pacs") == {"problems": [], "local": []}
    bad = [{**TUNNELS[0], "gateways": [SITE, {**CLOUD, "subnets": ["198.18.10.0/25"]}]}]
    assert view("pacs", bad)["problems"] and view("pacs", bad)["local"] == []


def test_defaults_fill_what_a_tunnel_leaves_out_and_its_own_values_win():
    t = view("site-gw", [{**TUNNELS[0], "dpd_delay": "5s"}])["local"][0]
    assert t["dpd_delay"] == "5s" and t["rekey_time"] == "4h"


@pytest.mark.parametrize("proposal", ["aes256gcm16-prfsha384-ecp384", "aes256gcm16-prfsha384-x25519-ecp384",
                                      "chacha20poly1305-prfsha512-x448", "aes256-sha512-prfsha512-ecp521"])
def test_strong_ike_proposals_are_above_the_floor(proposal):
    assert proposal_problem(proposal, "ike") is None


@pytest.mark.parametrize("proposal, why", [
    ("aes256gcm16-prfsha256-ecp384", "prfsha256"), ("aes256gcm16-prfsha1-ecp384", "prfsha1"),
    ("aes256gcm16-prfsha384-modp1024", "modp1024"), ("aes128gcm16-prfsha384-ecp384", "aes128gcm16"),
    ("aes256gcm16-prfsha384-ecp256", "ecp256"), ("aes256-sha1-prfsha384-ecp384", "sha1")])
def test_weak_ike_proposals_are_below_the_floor(proposal, why):
    assert why in proposal_problem(proposal, "ike")


def test_esp_proposals_need_no_prf_nor_key_exchange():
    assert proposal_problem("aes256gcm16", "esp") is None
    assert "prfsha384" in proposal_problem("aes256gcm16-prfsha384", "esp")
