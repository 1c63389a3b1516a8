# Copyright: dicomsec.hardening contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The ip_within test: is an address inside one of the given prefixes."""

from __future__ import annotations

from ansible.errors import AnsibleError

from ansible_collections.dicomsec.hardening.plugins.test.ip_address import parse_address, parse_network

DOCUMENTATION = r"""
name: ip_within
short_description: Is the address inside one of the given prefixes
version_added: 0.1.0
description:
  - True when the value is one IPv4 or IPv6 address that lies inside at least one of the prefixes given,
    as nginx's C(allow) or an nftables set would match it. An address is never inside a prefix of the other
    family.
  - False for a value that is not an address and for an empty list. A prefix that is not one (host bits
    set, a host name) is an error, naming it, rather than a silent mismatch.
  - The same reader as the C(dicomsec.hardening.ip_prefix) test and the C(dicomsec.hardening.nft_address_sets)
    filter.
options:
  _input:
    description: The address.
    type: raw
    required: true
  prefixes:
    description: Addresses or prefixes, host bits clear.
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: The gateway listener whose allowed sources hold this probe's address
  ansible.builtin.debug:
    msg: "{{ listeners | selectattr('allow', 'truthy') | selectattr('allow', 'contains', '198.18.10.0/24') | list }}"
  when: "'198.18.10.75' is dicomsec.hardening.ip_within(['198.18.10.0/24', '2001:db8:d1c0:10::/64'])"
"""

RETURN = r"""
_value:
  description: Whether the address lies inside one of the prefixes.
  type: bool
"""


def ip_within(value, prefixes):
    try:
        address = parse_address(value)
    except ValueError:
        return False
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    networks = []
    # Every prefix is read before any is matched, so a typo fails wherever it stands in the list.
    for prefix in prefixes or []:
        try:
            networks.append(parse_network(prefix))
        except ValueError as exc:
            raise AnsibleError("ip_within: %r is not an address or prefix (%s)" % (prefix, exc)) from exc
    return any(n.version == address.version and address in n for n in networks)


class TestModule:
    def tests(self):
        return {"ip_within": ip_within}
