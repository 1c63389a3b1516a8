# Copyright: dicomsec.hardening contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The ip_prefix test: an address or a prefix, read by the collection's one address reader."""

from __future__ import annotations

from ansible_collections.dicomsec.hardening.plugins.test.ip_address import _check_version, parse_network

DOCUMENTATION = r"""
name: ip_prefix
short_description: Is the value an IPv4 or IPv6 address or prefix with its host bits clear
version_added: 0.1.0
description:
  - True for a string that Python's C(ipaddress.ip_network) reads in strict mode, a prefix such as
    V(198.18.10.0/24) or V(2001:db8:d1c0:10::/64), or a bare address, which is its own /32 or /128.
  - False for a prefix with host bits set (V(198.18.10.1/24) is a typo more often than it is meant),
    a prefix length out of range, a host name, an IPv6 zone index, or a value that is not a string.
  - The same reader as the C(dicomsec.hardening.nft_address_sets) filter, which turns whitelists into
    nftables sets, so a value this test accepts is one the filter accepts.
options:
  _input:
    description: The value to check.
    type: raw
    required: true
  version:
    description: Accept only IPv4 (V(4)) or only IPv6 (V(6)) prefixes; any family when unset.
    type: int
    choices: [4, 6]
"""

EXAMPLES = r"""
- name: Refuse a management prefix with host bits set
  ansible.builtin.assert:
    that: "'198.18.40.0/24' is dicomsec.hardening.ip_prefix"

- name: A list of prefixes, all IPv4
  ansible.builtin.assert:
    that: prefixes | reject('dicomsec.hardening.ip_prefix', version=4) | list | length == 0
  vars:
    prefixes: [198.18.10.0/24, 198.18.12.7]
"""

RETURN = r"""
_value:
  description: Whether the value is an address or a prefix with host bits clear (of the family asked for).
  type: bool
"""


def ip_prefix(value, version=None):
    _check_version(version, "ip_prefix")
    try:
        net = parse_network(value)
    except ValueError:
        return False
    return version is None or net.version == int(version)


class TestModule:
    def tests(self):
        return {"ip_prefix": ip_prefix}
