# Copyright: dicomsec.hardening contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Turn inventory address lists into the IPv4 and IPv6 halves of an nftables interval set."""

from __future__ import annotations

import ipaddress
import socket

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: nft_address_sets
short_description: Validate addresses and prefixes and split them into nftables IPv4 and IPv6 sets
version_added: 0.1.0
description:
  - Accepts exactly what Python's C(ipaddress) module accepts, refusing anything that is not an
    address or a prefix, or a prefix with host bits set (C(10.0.0.1/8) is a typo more often than
    it is meant). Entries in canonical form are read with C(inet_pton), which is several times
    faster; every other spelling is left to C(ipaddress). An IPv6 zone index is refused.
  - Collapses overlapping and adjacent prefixes, so the set the kernel loads is as small as the
    whitelist allows, and splits the result by family.
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


def _parse_fast(text):
    """Return (version, first address as int, prefix length) for an entry in canonical
    form, or None to leave the entry to ipaddress.

    ipaddress costs about 8 us per entry; inet_pton about 1 us.  Only what inet_ntop
    writes back unchanged, with a plain decimal prefix length and no host bits set, is
    taken here, so everything accepted is exactly what ipaddress accepts; anything else
    (upper-case IPv6, leading zeros, a scope, a typo) goes to ipaddress, which either
    reads it or explains why not.
    """
    addr, sep, plen = text.partition("/")
    version = 6 if ":" in addr else 4
    family, bits = _FAMILIES[version]
    try:
        packed = socket.inet_pton(family, addr)
    except (OSError, ValueError):
        return None
    if socket.inet_ntop(family, packed) != addr:
        return None
    if sep:
        if not (plen.isascii() and plen.isdigit()) or (len(plen) > 1 and plen[0] == "0"):
            return None
        length = int(plen)
        if length > bits:
            return None
    else:
        length = bits
    value = int.from_bytes(packed, "big")
    if value & ((1 << (bits - length)) - 1):
        return None  # host bits set: ipaddress words the error
    return version, value, length


def _parse(text):
    """(version, first address as int, prefix length); raise ValueError like ipaddress."""
    parsed = _parse_fast(text)
    if parsed is not None:
        return parsed
    if "%" in text and ":" in text:
        # ipaddress reads fe80::1%eth0, but a set element has no zone: the kernel would
        # match fe80::1 on every interface, which is not what the entry says.
        raise ValueError("a zone index (%...) cannot be part of a set element")
    net = ipaddress.ip_network(text, strict=True)
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
    reason = str(exc).replace(repr(text), "").strip() or str(exc)
    return f"{_shorten(text, MAX_SHOWN)!r} ({_shorten(reason, 2 * MAX_SHOWN)})"


def _split(entries, name, fmt):
    if isinstance(entries, (str, bytes)) or not hasattr(entries, "__iter__"):
        raise AnsibleFilterError(f"{name}: expected a list of addresses or prefixes, got {entries!r}")
    spans = {4: [], 6: []}
    bad = []
    for entry in entries:
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
