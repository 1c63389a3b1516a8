# Copyright: dicomsec.hardening contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The collection's one reader of IP addresses and prefixes, and the ip_address test.

Every role checks addresses and prefixes through the functions here (the
ip_address and ip_prefix tests, the nft_address_sets filter), so what one role
accepts the others accept too, and all of it is exactly what Python's
ipaddress module reads.
"""

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleError

DOCUMENTATION = r"""
name: ip_address
short_description: Is the value one IPv4 or IPv6 address, as Python's ipaddress reads it
version_added: 0.1.0
description:
  - True for a string that Python's C(ipaddress.ip_address) reads as one address, such as
    V(198.18.10.60) or V(2001:db8::60). False for anything else, so V(:::::), V(2001:db8::1::2),
    V(300.1.1.1), a host name, a prefix, an empty string, a number or a list are refused.
  - An IPv6 zone index (V(fe80::1%eth0)) is refused, since neither Orthanc's host check nor an
    nftables rule can honour it.
options:
  _input:
    description: The value to check.
    type: raw
    required: true
  version:
    description: Accept only IPv4 (V(4)) or only IPv6 (V(6)) addresses; any family when unset.
    type: int
    choices: [4, 6]
  canonical:
    description:
      - Accept only the spelling the system itself writes (lower case, zeros compressed,
        V(2001:db8::60) rather than V(2001:DB8:0::060)).
      - For values compared as text with what a socket reports, as Orthanc compares a peer's
        address with a modality's C(Host).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Refuse a modality host that is not an address
  ansible.builtin.assert:
    that: item.host is dicomsec.hardening.ip_address(canonical=true)
    fail_msg: "{{ item.host }} is not an IP address in canonical form"
  loop: "{{ pacs_identity_modalities }}"

- name: Only an IPv6 address will do here
  ansible.builtin.assert:
    that: "'2001:db8::1' is dicomsec.hardening.ip_address(version=6)"
"""

RETURN = r"""
_value:
  description: Whether the value is one IP address (of the family asked for, in canonical form if asked).
  type: bool
"""


def parse_address(value):
    """The ipaddress object for one address; ValueError (with ipaddress's reason) otherwise."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    if "%" in value:
        raise ValueError("a zone index (%...) cannot be part of an address here")
    return ipaddress.ip_address(value)


def parse_network(value):
    """The ipaddress network for one address or prefix, host bits clear; ValueError otherwise.

    A bare address is its own /32 or /128 prefix. Surrounding whitespace is
    ignored, as YAML writers leave it; a zone index is refused: a set element
    or a rule has none, so the kernel would match the address on every interface.
    """
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    text = value.strip()
    if "%" in text:
        raise ValueError("a zone index (%...) cannot be part of a set element")
    return ipaddress.ip_network(text, strict=True)


def _check_version(version, name):
    if version not in (None, 4, 6):
        raise AnsibleError(f"{name}: version must be 4 or 6, not {version!r}")


def ip_address(value, version=None, canonical=False):
    _check_version(version, "ip_address")
    try:
        addr = parse_address(value)
    except ValueError:
        return False
    if version is not None and addr.version != int(version):
        return False
    return not canonical or str(addr) == value


class TestModule:
    def tests(self):
        return {"ip_address": ip_address}
