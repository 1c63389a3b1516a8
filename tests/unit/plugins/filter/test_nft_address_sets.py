# -*- coding: utf-8 -*-
"""The nft_address_sets filter: what it accepts, how it merges, and what it refuses."""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.dicomsec.hardening.plugins.filter.nft_address_sets import nft_address_sets


def test_addresses_and_prefixes_are_split_by_family_and_sorted():
    out = nft_address_sets(["2001:db8::1", "198.18.10.0/24", "198.18.9.7", "2001:db8:1::/48"])
    assert out == {"v4": ["198.18.9.7", "198.18.10.0/24"], "v6": ["2001:db8::1", "2001:db8:1::/48"]}


def test_adjacent_halves_merge_into_one_prefix():
    assert nft_address_sets(["198.18.10.0/25", "198.18.10.128/25"])["v4"] == ["198.18.10.0/24"]


def test_a_prefix_swallows_what_it_covers():
    out = nft_address_sets(["198.18.0.0/16", "198.18.10.5", "198.18.200.0/24", "2001:db8::/32", "2001:db8::5"])
    assert out == {"v4": ["198.18.0.0/16"], "v6": ["2001:db8::/32"]}


def test_a_merged_range_that_is_not_one_prefix_becomes_the_fewest_prefixes():
    # 10.0.0.0/24 + 10.0.1.0/25 cover 10.0.0.0-10.0.1.127: two prefixes, not one.
    assert nft_address_sets(["10.0.1.0/25", "10.0.0.0/24"])["v4"] == ["10.0.0.0/24", "10.0.1.0/25"]


def test_non_canonical_spellings_are_read_as_ipaddress_reads_them():
    out = nft_address_sets(["2001:DB8::/32", "0:0:0:0:0:0:0:1", " 198.18.1.1 ", "198.18.2.0/024"])
    assert out == {"v4": ["198.18.1.1", "198.18.2.0/24"], "v6": ["::1", "2001:db8::/32"]}


@pytest.mark.parametrize("entry, reason", [
    ("198.18.10.1/24", "has host bits set"),
    ("198.18.10.0/33", "does not appear to be an IPv4 or IPv6 network"),
    ("300.1.1.1", "does not appear to be an IPv4 or IPv6"),
    ("pacs.example.org", "does not appear to be an IPv4 or IPv6"),
    ("fe80::1%eth0", "zone index"),
    ("", "does not appear to be an IPv4 or IPv6"),
])
def test_bad_entries_are_refused_naming_the_variable_and_the_entry(entry, reason):
    with pytest.raises(AnsibleFilterError) as err:
        nft_address_sets(["198.18.10.0/24", entry], "nftables_whitelist_source_sets.modalities")
    message = str(err.value)
    assert message.startswith("nftables_whitelist_source_sets.modalities: not an address or prefix:")
    assert repr(entry.strip()) in message
    assert reason in message


def test_a_systematic_mistake_is_reported_with_a_count_not_a_flood():
    with pytest.raises(AnsibleFilterError) as err:
        nft_address_sets(["10.0.%d.1/24" % i for i in range(50)], "big")
    assert "and 45 more" in str(err.value)
    assert str(err.value).count("has host bits set") == 5


def test_a_string_instead_of_a_list_is_refused():
    with pytest.raises(AnsibleFilterError, match="expected a list"):
        nft_address_sets("198.18.10.0/24", "modalities")


def test_a_dict_of_lists_is_split_per_name_and_errors_name_the_key():
    out = nft_address_sets({"ct": ["198.18.10.5"], "mr": ["2001:db8::5"]}, "sets")
    assert out == {"ct": {"v4": ["198.18.10.5"], "v6": []}, "mr": {"v4": [], "v6": ["2001:db8::5"]}}
    with pytest.raises(AnsibleFilterError, match=r"^sets\.mr: not an address"):
        nft_address_sets({"ct": ["198.18.10.5"], "mr": ["nope"]}, "sets")


def test_nft_format_gives_counts_and_one_element_per_line():
    out = nft_address_sets(["198.18.10.0/25", "198.18.10.128/25", "198.18.12.1", "2001:db8::1"], "m", format="nft")
    assert out == {
        "v4": {"count": 2, "elements": "198.18.10.0/24,\n\t\t\t198.18.12.1"},
        "v6": {"count": 1, "elements": "2001:db8::1"},
    }
    assert nft_address_sets([], "m", format="nft") == {"v4": {"count": 0, "elements": ""}, "v6": {"count": 0, "elements": ""}}


def test_an_unknown_format_is_refused():
    with pytest.raises(AnsibleFilterError, match="format must be one of list, nft"):
        nft_address_sets(["198.18.10.5"], "m", format="json")


def _random_prefix(rnd, bits):
    length = rnd.randint(bits - 12, bits)
    value = rnd.getrandbits(bits) >> (bits - length) << (bits - length)
    if bits == 128 and rnd.random() < 0.5:
        value = (0x20010DB8 << 96) | (value & ((1 << 96) - 1))
    return ipaddress.ip_network((value, length))


def test_merging_covers_exactly_what_ipaddress_collapse_covers():
    rnd = random.Random(2762)
    for dummy in range(200):
        nets = [_random_prefix(rnd, rnd.choice((32, 128))) for dummy in range(rnd.randint(1, 80))]
        out = nft_address_sets([str(n) for n in nets])
        for version, key in ((4, "v4"), (6, "v6")):
            expected = list(ipaddress.collapse_addresses(n for n in nets if n.version == version))
            assert [ipaddress.ip_network(e) for e in out[key]] == expected


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="nft -c needs root and nftables")
def test_rendered_elements_are_accepted_by_nft(tmp_path):
    out = nft_address_sets(
        ["198.18.10.0/25", "198.18.10.128/25", "198.18.12.1", "::ffff:198.18.0.1", "2001:db8::/48", "::1"],
        "m", format="nft")
    ruleset = tmp_path / "check.nft"
    ruleset.write_text(
        "table inet dicomsec_filter_test {\n"
        "\tset v4 { type ipv4_addr; flags interval; auto-merge; elements = {\n\t\t\t%s\n\t\t} }\n"
        "\tset v6 { type ipv6_addr; flags interval; auto-merge; elements = {\n\t\t\t%s\n\t\t} }\n"
        "}\n" % (out["v4"]["elements"], out["v6"]["elements"]))
    proc = subprocess.run(["nft", "-c", "-f", str(ruleset)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_a_pasted_list_in_one_entry_is_shown_shortened():
    pasted = ",".join("10.%d.0.0/16" % i for i in range(2000))
    with pytest.raises(AnsibleFilterError) as err:
        nft_address_sets([pasted], "modalities")
    assert len(str(err.value)) < 300
    assert "'10.0.0.0/16,10.1.0.0/16," in str(err.value)


@pytest.mark.parametrize("entries, v4, v6", [
    (["0.0.0.0/0", "198.18.10.5"], ["0.0.0.0/0"], []),
    (["::/0", "2001:db8::1"], [], ["::/0"]),
    (["255.255.255.255", "255.255.255.254"], ["255.255.255.254/31"], []),
    (["0.0.0.0", "0.0.0.1"], ["0.0.0.0/31"], []),
    (["0.0.0.0/1", "128.0.0.0/1"], ["0.0.0.0/0"], []),
    (["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"], [],
     ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"]),
    (["198.18.0.1", "198.18.0.2"], ["198.18.0.1", "198.18.0.2"], []),
])
def test_edges_of_the_address_space_merge_exactly(entries, v4, v6):
    assert nft_address_sets(entries) == {"v4": v4, "v6": v6}


def _mutations(rnd, text):
    yield text
    yield text.upper()
    yield "0" + text
    yield text.replace(".", ".0", 1)
    yield text + "/"
    yield text + "/0" + str(rnd.randint(0, 9))
    yield text + "/" + str(rnd.randint(0, 130))
    yield text.replace(":", "::", 1)
    yield text[:-1]
    yield text + " "
    yield "١" + text[1:]


def test_every_entry_is_accepted_or_refused_exactly_as_ipaddress_does():
    rnd = random.Random(104)
    for dummy in range(2000):
        bits = rnd.choice((32, 128))
        for text in _mutations(rnd, str(_random_prefix(rnd, bits).network_address)):
            try:
                expected = ipaddress.ip_network(text.strip(), strict=True)
            except ValueError:
                expected = None
            try:
                got = nft_address_sets([text])
            except AnsibleFilterError:
                got = None
            if expected is None or "%" in text:
                assert got is None, text
            else:
                assert [ipaddress.ip_network(e) for e in got["v4"] + got["v6"]] == [expected], text


def test_the_plugin_documentation_is_valid_yaml_and_the_examples_hold():
    import yaml

    from ansible_collections.dicomsec.hardening.plugins.filter import nft_address_sets as plugin

    doc = yaml.safe_load(plugin.DOCUMENTATION)
    assert set(doc["options"]) == {"_input", "name", "format"}
    assert doc["options"]["format"]["choices"] == list(plugin.FORMATS)
    examples = yaml.safe_load(plugin.EXAMPLES)
    assert len(examples) == 2
    yaml.safe_load(plugin.RETURN)
    # The results the examples promise in their comments:
    sample = ["198.18.10.0/25", "198.18.10.128/25", "2001:db8::1"]
    assert nft_address_sets(sample, "modalities") == {"v4": ["198.18.10.0/24"], "v6": ["2001:db8::1"]}
    assert nft_address_sets(sample, "modalities", format="nft") == {
        "v4": {"count": 1, "elements": "198.18.10.0/24"}, "v6": {"count": 1, "elements": "2001:db8::1"}}
