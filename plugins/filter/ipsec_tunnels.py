# Copyright: dicomsec.hardening contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Read strongswan_tunnel's tunnel model: every problem of the inventory, and this gateway's view.

A tunnel names two gateways; each gateway renders only the tunnels it belongs to, with the
other gateway as its remote side. What argument_specs cannot check is checked here, in one
pass, so that the role can refuse bad input with every problem named before any change:
subnets (read by the collection's one address reader), overlaps between the two sides,
gateways missing from the inventory, pre-shared keys that are too short, proposals below the
floor, and time values.
"""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

from ansible_collections.dicomsec.hardening.plugins.test.ip_address import parse_network

DOCUMENTATION = r"""
name: ipsec_tunnels
short_description: Check strongswan_tunnel's tunnels and give one gateway its view of them
version_added: 0.1.0
description:
  - Reads the tunnel model of the C(dicomsec.hardening.strongswan_tunnel) role (a list of tunnels,
    each with two gateways, their addresses, IKE identities and protected subnets, an
    authentication and proposals).
  - Returns every problem found, each naming the variable and the tunnel, and the tunnels the
    given host is a gateway of, seen from that host (V(local) is this gateway, V(remote) the peer),
    with the role's defaults filled in.
  - The views carry no secret (no pre-shared key, no private key), since they end up in loop
    items that verbose runs print; the role reads secrets from its input in no_log tasks.
  - Subnets are read by Python's C(ipaddress) in strict mode (host bits must be clear), through the
    same reader as the C(dicomsec.hardening.ip_prefix) test; overlapping or identical subnets on the
    two sides of a tunnel are refused, since the kernel could not tell which side a packet is for.
  - A proposal is below the floor unless every algorithm in it is one of AES-GCM-256 (or
    ChaCha20-Poly1305, or AES-256 with SHA-384/512 integrity), PRF SHA-384/512 and ECP-384/521,
    X25519 or X448. SHA-1, MD5, MODP groups up to 2048 bits, 3DES and 128-bit AES are below it.
options:
  _input:
    description: The tunnels (C(strongswan_tunnel_tunnels)).
    type: list
    elements: dict
    required: true
  host:
    description: The gateway whose view is wanted (its C(inventory_hostname)).
    type: str
    required: true
  inventory:
    description: Every host name in the inventory; a gateway not in it is a problem.
    type: list
    elements: str
    required: true
  defaults:
    description: Values for keys a tunnel leaves out (C(proposals), C(esp_proposals), C(rekey_time), ...).
    type: dict
    default: {}
  psk_min_length:
    description: The shortest pre-shared key accepted.
    type: int
    default: 32
  name:
    description: The variable's name, used in messages.
    type: str
    default: strongswan_tunnel_tunnels
"""

EXAMPLES = r"""
- name: Check the tunnels and keep this gateway's view
  ansible.builtin.set_fact:
    tunnels: >-
      {{ strongswan_tunnel_tunnels | dicomsec.hardening.ipsec_tunnels(host=inventory_hostname,
         inventory=groups['all'], defaults={'proposals': ['aes256gcm16-prfsha384-ecp384']}) }}
"""

RETURN = r"""
_value:
  description: C(problems), a list of messages (empty when the input is good), and C(local), this host's tunnels.
  type: dict
"""

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# Values are written inside double quotes in swanctl.conf: no quote, backslash, brace or line break.
ID_PATTERN = re.compile(r"^[^\"\\{}\r\n\x00-\x1f]{1,255}$")
TIME_PATTERN = re.compile(r"^[0-9]+[smhd]?$")
PSK_FORBIDDEN = re.compile(r"[\"\\\r\n\x00-\x1f]")

# The floor. Keywords as strongSwan writes them (swanctl.conf proposals, IKEv2 only).
AEAD = {"aes256gcm16", "aes256gcm", "aes256gcm128", "chacha20poly1305"}
CIPHERS = {"aes256", "aes256ctr"}
INTEGRITY = {"sha384", "sha512", "sha2_384", "sha2_512"}
PRF = {"prfsha384", "prfsha512"}
DH = {"ecp384", "ecp521", "x25519", "curve25519", "x448", "curve448"}
# ESP only: extended sequence numbers change nothing about strength.
ESP_EXTRA = {"esn", "noesn"}
TIME_KEYS = ("rekey_time", "over_time", "child_rekey_time", "child_life_time", "dpd_delay")


def _seconds(value):
    text = str(value).strip()
    if not TIME_PATTERN.match(text):
        return None
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(text[-1], 1)
    number = text[:-1] if text[-1] in "smhd" else text
    return int(number) * unit


def proposal_problem(proposal, kind):
    """Why an IKE or ESP proposal is below the floor, or None."""
    tokens = [t for t in str(proposal).strip().lower().split("-") if t]
    if not tokens:
        return "is empty"
    known = AEAD | CIPHERS | INTEGRITY | DH | (PRF if kind == "ike" else ESP_EXTRA)
    weak = [t for t in tokens if t not in known]
    if weak:
        return "uses %s, below the floor" % ", ".join(weak)
    enc = [t for t in tokens if t in AEAD | CIPHERS]
    if not enc:
        return "names no encryption algorithm"
    if any(t in CIPHERS for t in enc) and not any(t in INTEGRITY for t in tokens):
        return "uses a cipher without AEAD and names no integrity algorithm (sha384 or sha512)"
    if kind == "ike" and not any(t in PRF for t in tokens):
        return "names no PRF (prfsha384 or prfsha512)"
    if kind == "ike" and not any(t in DH for t in tokens):
        return "names no key exchange (ecp384, x25519, ...)"
    return None


def _networks(values, where, problems):
    nets = []
    if not isinstance(values, list) or not values:
        problems.append("%s must list at least one subnet" % where)
        return nets
    for value in values:
        try:
            nets.append(parse_network(value))
        except (ValueError, TypeError):
            problems.append("%s: %s is not a subnet with its host bits clear" % (where, _quote(value)))
    return nets


def _quote(value):
    text = str(value)
    return '"%s"' % (text if len(text) <= 60 else text[:57] + "...")


def _address(value):
    try:
        net = parse_network(value)
    except (ValueError, TypeError):
        return None
    return net.network_address if net.num_addresses == 1 else None


def _check_gateways(tunnel, at, inventory, problems):
    gateways = tunnel.get("gateways")
    if not isinstance(gateways, list) or len(gateways) != 2:
        problems.append("%s.gateways must name exactly two gateways, one at each end" % at)
        return None
    hosts = [g.get("host") if isinstance(g, dict) else None for g in gateways]
    if hosts[0] is not None and hosts[0] == hosts[1]:
        problems.append("%s.gateways: both ends are %s; a tunnel joins two different gateways" % (at, hosts[0]))
    sides = []
    for i, gw in enumerate(gateways):
        where = "%s.gateways[%d] (%s)" % (at, i, hosts[i] or "?")
        if not isinstance(gw, dict):
            problems.append("%s must be a gateway (host, address, subnets)" % where)
            sides.append(None)
            continue
        if not gw.get("host"):
            problems.append("%s.host must name the gateway's inventory host" % where)
        elif gw["host"] not in inventory:
            problems.append("%s.host %s is not in the inventory: each end of a tunnel must be a host the play "
                            "can configure" % (where, gw["host"]))
        addr = _address(gw.get("address"))
        if addr is None:
            problems.append("%s.address %s is not an IP address" % (where, _quote(gw.get("address"))))
        ident = gw.get("id") if gw.get("id") not in (None, "") else gw.get("address")
        if not isinstance(ident, str) or not ID_PATTERN.match(ident):
            problems.append("%s.id %s cannot be an IKE identity (no quotes, backslashes, braces or "
                            "control characters)" % (where, _quote(ident)))
        nets = _networks(gw.get("subnets"), where + ".subnets", problems)
        sides.append({"addr": addr, "id": ident, "nets": nets, "where": where})
    if any(s is None for s in sides):
        return None
    a, b = sides
    if a["addr"] is not None and b["addr"] is not None:
        if a["addr"].version != b["addr"].version:
            problems.append("%s.gateways: the two addresses are of different IP versions" % at)
        elif a["addr"] == b["addr"]:
            problems.append("%s.gateways: both ends have the address %s" % (at, a["addr"]))
    if a["id"] == b["id"] and a["id"]:
        problems.append("%s.gateways: both ends have the IKE identity %s; each end needs its own" % (at, _quote(a["id"])))
    for x in a["nets"]:
        for y in b["nets"]:
            if x.version == y.version and x.overlaps(y):
                kind = "the same subnet" if x == y else "overlapping subnets"
                problems.append("%s: %s and %s are %s on both sides of the tunnel; the kernel could not tell which "
                                "side a packet is for" % (at, x, y, kind))
    # The gateways keep traffic for the far subnets off the clear path; a peer whose own
    # address lies inside them could then not be reached for IKE.
    for near, far in ((a, b), (b, a)):
        if far["addr"] is not None and any(far["addr"].version == n.version and far["addr"] in n for n in far["nets"]):
            problems.append("%s.address %s lies inside its own protected subnets; the tunnel's outer address must "
                            "be outside them" % (far["where"], far["addr"]))
    return sides


def _check_auth(tunnel, at, hosts, psk_min_length, problems):
    auth = tunnel.get("auth") or {}
    method = auth.get("method", "psk")
    if method == "psk":
        psk = auth.get("psk")
        if psk not in (None, ""):
            psk = str(psk)
            if len(psk) < psk_min_length:
                problems.append("%s.auth.psk is shorter than %d characters; leave it out to have a long random "
                                "one generated" % (at, psk_min_length))
            elif PSK_FORBIDDEN.search(psk):
                problems.append("%s.auth.psk holds a quote, backslash or control character" % at)
    elif method == "x509":
        supplied = auth.get("certificates") or {}
        if supplied or auth.get("ca"):
            if not auth.get("ca"):
                problems.append("%s.auth.ca is needed with supplied certificates: the CA that signed them" % at)
            for h in hosts:
                c = supplied.get(h) or {}
                if not (c.get("certificate") and c.get("key")):
                    problems.append("%s.auth.certificates.%s needs certificate and key (PEM)" % (at, h))
    else:
        problems.append("%s.auth.method %s must be psk or x509" % (at, _quote(method)))


def _check_proposals(view, at, problems):
    if view["allow_weak_proposals"]:
        return
    for key, kind in (("proposals", "ike"), ("esp_proposals", "esp")):
        for i, p in enumerate(view[key]):
            why = proposal_problem(p, kind)
            if why:
                problems.append("%s.%s[%d] %s %s; strongswan_tunnel refuses proposals below AES-GCM-256, PRF "
                                "SHA-384 and ECP-384/X25519 unless allow_weak_proposals is true"
                                % (at, key, i, _quote(p), why))


def _check_times(view, at, problems):
    secs = {}
    for key in TIME_KEYS:
        value = view.get(key)
        secs[key] = _seconds(value)
        if secs[key] is None:
            problems.append("%s.%s %s must be a number of seconds, or end in s, m, h or d" % (at, key, _quote(value)))
    if None not in (secs["child_rekey_time"], secs["child_life_time"]) and secs["child_life_time"] <= secs["child_rekey_time"]:
        problems.append("%s.child_life_time must be longer than child_rekey_time, or the CHILD_SA expires before it "
                        "is rekeyed" % at)
    if secs["dpd_delay"] == 0:
        problems.append("%s.dpd_delay 0 turns dead-peer detection off; the tunnel would not come back after the "
                        "peer restarts" % at)


def _public_auth(auth):
    """The authentication without its secrets: views end up in loop items, which verbose runs print."""
    certs = auth.get("certificates") or {}
    return {
        "method": auth.get("method", "psk"),
        "psk_given": auth.get("psk") not in (None, ""),
        "supplied": bool(certs or auth.get("ca")),
        "ca": auth.get("ca") or "",
        "crl": auth.get("crl") or "",
        "certificates": {h: (c or {}).get("certificate", "") for h, c in certs.items() if isinstance(c, dict)},
    }


def ipsec_tunnels(tunnels, host, inventory, defaults=None, psk_min_length=32, name="strongswan_tunnel_tunnels"):
    if not isinstance(tunnels, list):
        raise AnsibleFilterError("%s must be a list of tunnels" % name)
    defaults = dict(defaults or {})
    inventory = set(inventory or [])
    problems, local, seen = [], [], set()
    for idx, tunnel in enumerate(tunnels):
        if not isinstance(tunnel, dict):
            problems.append("%s[%d] must be a tunnel (name, gateways, auth)" % (name, idx))
            continue
        tname = tunnel.get("name")
        at = "%s[%d] (%s)" % (name, idx, tname or "?")
        if not isinstance(tname, str) or not NAME_PATTERN.match(tname):
            problems.append("%s.name must be a lowercase letter, then letters, digits, - or _ (at most 32)" % at)
        elif tname in seen:
            problems.append("%s.name is used by an earlier tunnel" % at)
        seen.add(tname)
        sides = _check_gateways(tunnel, at, inventory, problems)
        hosts = [g.get("host") for g in tunnel.get("gateways") or [] if isinstance(g, dict)]
        _check_auth(tunnel, at, hosts, psk_min_length, problems)
        view = dict(defaults)
        view.update({k: v for k, v in tunnel.items() if k not in ("gateways",) and v is not None})
        view["auth"] = _public_auth(tunnel.get("auth") or {})
        for key in ("proposals", "esp_proposals"):
            if isinstance(view.get(key), str):
                view[key] = [view[key]]
            view[key] = list(view.get(key) or [])
            if not view[key]:
                problems.append("%s.%s is empty" % (at, key))
        view["allow_weak_proposals"] = bool(view.get("allow_weak_proposals", False))
        _check_proposals(view, at, problems)
        _check_times(view, at, problems)
        if sides is None or host not in hosts:
            continue
        mine = hosts.index(host)
        gws = []
        for gw, side in zip(tunnel["gateways"], sides):
            gws.append({"host": gw["host"], "address": str(side["addr"]) if side["addr"] else gw.get("address"),
                        "id": side["id"], "subnets": [str(n) for n in side["nets"]]})
        view["local"], view["remote"] = gws[mine], gws[1 - mine]
        # The first gateway listed is the one whose identity comes first in the PSK's
        # secrets section, so both ends render the same section.
        view["first"] = mine == 0
        local.append(view)
    return {"problems": problems, "local": local}


class FilterModule:
    def filters(self):
        return {"ipsec_tunnels": ipsec_tunnels}
