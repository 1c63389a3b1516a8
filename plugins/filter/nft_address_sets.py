# Copyright: dicomsec.hardening contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Turn inventory address lists into the IPv4 and IPv6 halves of an nftables interval set."""

from __future__ import annotations

import socket

from ansible.errors import AnsibleFilterError

from ansible_collections.dicomsec.hardening.plugins.test.ip_address import parse_network

DOCUMENTATION = r"""
name: nft_address_sets
short_description: Validate addresses and prefixes and split them into nftables IPv4 and IPv6 sets
version_added: 0.1.0
description:
  - Reads every entry with Python's C(ipaddress) module (through the collection's one address
    reader, shared with the C(dicomsec.hardening.ip_prefix) test), refusing anything that is not an
    address or a prefix, or a prefix with host bits set (C(10.0.0.1/8) is a typo more often than
    it is meant). An IPv6 zone index is refused.
  - Collapses overlapping and adjacent prefixes, so the set the kernel loads is as small as the
    whitelist allows, and splits the result by family. A list whose entries together cover a whole
    family collapses to exactly C(0.0.0.0/0) or C(::/0), which is how a caller recognises it.
options:
  _input:
    description:
      - Addresses and prefixes, IPv4 and IPv6 mixed.
      - Or a dict of such lists by name; each is split on its own.
    type: raw
    required: true
  name:
    description: What the list is called in the inventory, used in error messages.
    type: str
    default: addresses
  format:
    description:
      - C(list) returns each family as a list of strings.
      - C(nft) returns each family as a dict with C(count) and C(elements), the entries
        already joined one per line for an nftables C(elements) block. A 100,000-entry
        list then travels through Ansible as one string, because handing Ansible a list
        that long costs more than parsing it.
    type: str
    choices: [list, nft]
    default: list
"""

EXAMPLES = r"""
- name: Split a whitelist
  ansible.builtin.debug:
    msg: "{{ ['198.18.10.0/25', '198.18.10.128/25', '2001:db8::1'] | dicomsec.hardening.nft_address_sets('modalities') }}"
  # -> {"v4": ["198.18.10.0/24"], "v6": ["2001:db8::1"]}

- name: The same, ready for a set's elements block in a template
  ansible.builtin.debug:
    msg: "{{ ['198.18.10.0/25', '198.18.10.128/25', '2001:db8::1'] | dicomsec.hardening.nft_address_sets('modalities', format='nft') }}"
  # -> {"v4": {"count": 1, "elements": "198.18.10.0/24"}, "v6": {"count": 1, "elements": "2001:db8::1"}}
"""

RETURN = r"""
_value:
  description:
    - C(v4) and C(v6) lists, each collapsed and sorted; a single address is written without a prefix length.
    - With O(format=nft), C(v4) and C(v6) are dicts with C(count) and C(elements) instead.
    - For a dict input, a dict of such results under the same names.
  type: dict
"""

# Errors name at most this many bad entries: a 100,000-entry list with a
# systematic mistake should not produce a 100,000-line message.
MAX_REPORTED = 5
# ... and each at most this long: one entry may be a whole pasted list.
MAX_SHOWN = 60
FORMATS = ("list", "nft")
_FAMILIES = {4: (socket.AF_INET, 32), 6: (socket.AF_INET6, 128)}
# One element per line in the rendered set, so a --diff shows which entries changed.
ELEMENT_SEPARATOR = ",\n\t\t\t"


def _parse(text):
    """(version, first address as int, prefix length); raise ValueError like ipaddress."""
    net = parse_network(text)
    return net.version, int(net.network_address), net.prefixlen


def _collapse(spans, bits):
    """Merge overlapping and adjacent (first, last) integer spans into as few prefixes
    as cover exactly the same addresses; return (first, prefix length) pairs, sorted.

    What ipaddress.collapse_addresses does, on integers: about ten times faster for the
    100,000-entry whitelists the role is meant to handle.
    """
    out = []
    if not spans:
        return out
    spans.sort()
    cur_lo, cur_hi = spans[0]
    for lo, hi in spans[1:]:
        if lo <= cur_hi + 1:
            if hi > cur_hi:
                cur_hi = hi
            continue
        _summarize(cur_lo, cur_hi, bits, out)
        cur_lo, cur_hi = lo, hi
    _summarize(cur_lo, cur_hi, bits, out)
    return out


def _summarize(lo, hi, bits, out):
    """Append the fewest prefixes that cover lo..hi exactly (largest aligned blocks first)."""
    while lo <= hi:
        size = (lo & -lo) or (1 << bits)  # the largest block lo is aligned to
        while lo + size - 1 > hi:
            size >>= 1
        out.append((lo, bits - size.bit_length() + 1))
        lo += size


def _render(version, prefixes):
    # Only writing, never reading: inet_ntop gives the canonical text several times
    # faster than ipaddress, for sets of any size.
    family, bits = _FAMILIES[version]
    width = bits // 8
    ntop = socket.inet_ntop
    return [
        ntop(family, lo.to_bytes(width, "big")) + ("" if length == bits else "/%d" % length)
        for lo, length in prefixes
    ]


def _shorten(text, limit):
    return text if len(text) <= limit else text[:limit] + "..."


def _bad_entry(text, exc):
    """The entry (shortened) and why it was refused, without repeating the entry."""
    reason = str(exc).replace(repr(text), "").strip()
    if reason.startswith(text + " "):  # "10.0.0.1/8 has host bits set"
        reason = reason[len(text) + 1:]
    reason = reason or str(exc)
    return f"{_shorten(text, MAX_SHOWN)!r} ({_shorten(reason, 2 * MAX_SHOWN)})"


def _split(entries, name, fmt):
    if isinstance(entries, (str, bytes)) or not hasattr(entries, "__iter__"):
        raise AnsibleFilterError(f"{name}: expected a list of addresses or prefixes, got {entries!r}")
    spans = {4: [], 6: []}
    bad = []
    for entry in entries:
        # A number from YAML becomes its text, which ipaddress then refuses with its reason.
        text = str(entry).strip()
        try:
            version, value, length = _parse(text)
        except ValueError as exc:
            bad.append(_bad_entry(text, exc))
            continue
        bits = _FAMILIES[version][1]
        spans[version].append((value, value | ((1 << (bits - length)) - 1)))
    if bad:
        shown = "; ".join(bad[:MAX_REPORTED])
        more = f" and {len(bad) - MAX_REPORTED} more" if len(bad) > MAX_REPORTED else ""
        raise AnsibleFilterError(f"{name}: not an address or prefix: {shown}{more}")
    result = {}
    for version in (4, 6):
        rendered = _render(version, _collapse(spans[version], _FAMILIES[version][1]))
        if fmt == "nft":
            rendered = {"count": len(rendered), "elements": ELEMENT_SEPARATOR.join(rendered)}
        result["v%d" % version] = rendered
    return result


def nft_address_sets(entries, name="addresses", format="list"):  # pylint: disable=redefined-builtin
    if format not in FORMATS:
        raise AnsibleFilterError(f"nft_address_sets: format must be one of {', '.join(FORMATS)}, not {format!r}")
    if isinstance(entries, dict):
        return {key: _split(value, f"{name}.{key}", format) for key, value in entries.items()}
    return _split(entries, name, format)


class FilterModule:
    def filters(self):
        return {"nft_address_sets": nft_address_sets}
