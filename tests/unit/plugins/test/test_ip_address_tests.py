# -*- coding: utf-8 -*-
"""The ip_address and ip_prefix tests: what they accept, what they refuse, and that they
agree with ipaddress and with the nft_address_sets filter on every entry."""

from __future__ import annotations

import ipaddress
import random

import pytest

from ansible.errors import AnsibleError, AnsibleFilterError
from ansible_collections.dicomsec.hardening.plugins.filter.nft_address_sets import nft_address_sets
from ansible_collections.dicomsec.hardening.plugins.test.ip_address import TestModule as AddressTests
from ansible_collections.dicomsec.hardening.plugins.test.ip_address import ip_address
from ansible_collections.dicomsec.hardening.plugins.test.ip_prefix import TestModule as PrefixTests
from ansible_collections.dicomsec.hardening.plugins.test.ip_prefix import ip_prefix
from ansible_collections.dicomsec.hardening.plugins.test.ip_within import TestModule as WithinTests
from ansible_collections.dicomsec.hardening.plugins.test.ip_within import ip_within


@pytest.mark.parametrize("value", ["198.18.10.60", "2001:db8:d1c0:10::60", "::", "::1", "0.0.0.0",
                                   "::ffff:198.18.10.60", "2001:DB8::60"])
def test_addresses_ipaddress_reads_are_addresses(value):
    assert ip_address(value)


# What the pattern the roles used before let through is first.
@pytest.mark.parametrize("value", [":::::", "2001:db8::1::2", "1:2:3:4:5:6:7:8:9", "12345::", "::g",
                                   "198.18.10.256", "198.18.10", "198.018.10.1", "198.18.10.60/32", "ct-1.example",
                                   "", " 198.18.10.60", "fe80::1%eth0", None, 3232238140, ["198.18.10.60"], True])
def test_everything_else_is_not_an_address(value):
    assert not ip_address(value)


@pytest.mark.parametrize("value, version, expected", [
    ("198.18.10.60", 4, True), ("198.18.10.60", 6, False),
    ("2001:db8::60", 6, True), ("2001:db8::60", 4, False),
])
def test_version_limits_the_family(value, version, expected):
    assert ip_address(value, version=version) is expected


@pytest.mark.parametrize("value, expected", [
    ("2001:db8:d1c0:10::60", True), ("198.18.10.60", True),
    ("2001:DB8:d1c0:10::60", False), ("2001:db8:d1c0:10:0:0:0:60", False), ("2001:db8:d1c0:10::060", False),
])
def test_canonical_accepts_only_the_spelling_a_socket_reports(value, expected):
    assert ip_address(value) is True
    assert ip_address(value, canonical=True) is expected


@pytest.mark.parametrize("value", ["198.18.10.0/24", "198.18.10.60", "2001:db8:d1c0:10::/64", "::/0", "0.0.0.0/0",
                                   " 198.18.10.0/24 ", "198.18.10.0/255.255.255.0"])
def test_prefixes_with_host_bits_clear_are_prefixes(value):
    assert ip_prefix(value)


@pytest.mark.parametrize("value", ["198.18.10.1/24", "198.18.10.0/33", "2001:db8::1/64", "2001:db8::/129", ":::::/64",
                                   "2001:db8::1::2", "fe80::%eth0/64", "pacs.example", "", None, 24, ["198.18.10.0/24"]])
def test_everything_else_is_not_a_prefix(value):
    assert not ip_prefix(value)


def test_prefix_version_limits_the_family():
    assert ip_prefix("198.18.10.0/24", version=4) and not ip_prefix("198.18.10.0/24", version=6)
    assert ip_prefix("2001:db8::/32", version=6) and not ip_prefix("2001:db8::/32", version=4)


@pytest.mark.parametrize("test", [ip_address, ip_prefix])
def test_an_unknown_version_is_an_error_not_a_quiet_false(test):
    with pytest.raises(AnsibleError, match="version must be 4 or 6"):
        test("198.18.10.60", version=5)


def test_the_tests_are_registered_under_their_names():
    assert AddressTests().tests() == {"ip_address": ip_address}
    assert PrefixTests().tests() == {"ip_prefix": ip_prefix}


def _mutations(rnd, text):
    yield text
    yield text.upper()
    yield "0" + text
    yield text.replace(".", ".0", 1)
    yield text.replace(":", "::", 1)
    yield text + "::"
    yield text + "/" + str(rnd.randint(0, 130))
    yield text[:-1]


def test_ip_prefix_ipaddress_and_the_filter_agree_on_every_entry():
    rnd = random.Random(4242)
    for dummy in range(1500):
        bits = rnd.choice((32, 128))
        addr = ipaddress.ip_address(rnd.getrandbits(bits)) if bits == 32 else ipaddress.IPv6Address(rnd.getrandbits(128))
        for text in _mutations(rnd, str(addr)):
            try:
                ipaddress.ip_network(text, strict=True)
                expected = True
            except ValueError:
                expected = False
            try:
                nft_address_sets([text])
                filtered = True
            except AnsibleFilterError:
                filtered = False
            assert ip_prefix(text) is expected is filtered, text
            try:
                ipaddress.ip_address(text)
                is_addr = True
            except ValueError:
                is_addr = False
            assert ip_address(text) is is_addr, text


def test_the_plugin_documentation_is_valid_yaml():
    import yaml

    from ansible_collections.dicomsec.hardening.plugins.test import ip_address as address_plugin
    from ansible_collections.dicomsec.hardening.plugins.test import ip_prefix as prefix_plugin

    for plugin, name, options in ((address_plugin, "ip_address", {"_input", "version", "canonical"}),
                                  (prefix_plugin, "ip_prefix", {"_input", "version"})):
        doc = yaml.safe_load(plugin.DOCUMENTATION)
        assert doc["name"] == name
        assert set(doc["options"]) == options
        assert yaml.safe_load(plugin.EXAMPLES)
        yaml.safe_load(plugin.RETURN)


@pytest.mark.parametrize("value, prefixes, expected", [
    ("198.18.10.75", ["198.18.10.0/24"], True),
    ("198.18.10.75", ["198.18.12.0/24", "198.18.10.75"], True),
    ("198.18.11.75", ["198.18.10.0/24"], False),
    # Never across families, not even for the IPv4-mapped form.
    ("::ffff:198.18.10.75", ["198.18.10.0/24"], False),
    ("2001:db8:d1c0:10::75", ["198.18.10.0/24", "2001:db8:d1c0:10::/64"], True),
    ("198.18.10.75", [], False),
    ("198.18.10.75", "198.18.10.0/24", True),
    ("ct-1.example", ["198.18.10.0/24"], False),
    (None, ["198.18.10.0/24"], False),
])
def test_ip_within_matches_as_ipaddress_does(value, prefixes, expected):
    assert ip_within(value, prefixes) is expected


@pytest.mark.parametrize("prefix", ["198.18.10.1/24", "gateway.example", "198.18.10.0/33"])
def test_ip_within_names_a_prefix_that_is_not_one(prefix):
    with pytest.raises(AnsibleError, match="ip_within: '%s' is not an address or prefix" % prefix.replace(".", r"\.")):
        ip_within("198.18.10.75", ["198.18.10.0/24", prefix])


def test_ip_within_is_registered():
    assert WithinTests().tests()["ip_within"] is ip_within
