# Copyright: dicomsec.hardening contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Derive every role's variables for one host from the estate model in the inventory."""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

from ansible_collections.dicomsec.hardening.plugins.test.ip_address import parse_network

DOCUMENTATION = r"""
name: estate_role_vars
short_description: The role variables one host gets from the estate model (sites, modalities, users, probes)
version_added: 0.1.0
description:
  - The inventory describes the world once. Each site is a group whose hosts carry C(dicomsec_site) (the
    site's name) and the site's registered modalities and remote users as data (C(dicomsec_site_modalities),
    C(dicomsec_site_users)). Modalities are not managed hosts; probe hosts (group C(probes)) are, and a probe at
    the V(authorized) position is registered like a modality so the authorized path is proven end to end.
  - This filter reads that model through C(hostvars) and returns, for one host, the variables of the roles it
    runs, so an address is written once. A PACS gets C(pacs_identity_modalities) and the firewall's
    C(nftables_whitelist_source_sets) and C(nftables_whitelist_services); a PACS behind a gateway gets
    C(pacs_identity_gateway_address) and a firewall that admits the gateway alone; a gateway gets
    C(nginx_stream_proxy_modalities) and C(nginx_stream_proxy_users); an IPsec gateway gets
    C(strongswan_tunnel_tunnels) from C(dicomsec_tunnels), each end's subnets those of its site
    (C(dicomsec_site_subnets)) and its address C(dicomsec_ipsec_address) or C(ansible_host).
  - A variable the host already has from the inventory is left out of the result, so a role variable given
    explicitly still wins.
  - Inconsistent models fail with a message naming the site and entry - a modality without an address, a
    duplicated AE title at one PACS, an address that is not one, a gateway serving a PACS that is not in the
    inventory.
options:
  _input:
    description: C(hostvars).
    type: dict
    required: true
  host:
    description: The host to derive variables for (C(inventory_hostname)).
    type: str
    required: true
  groups:
    description: C(groups).
    type: dict
    required: true
  names_only:
    description:
      - Return the sorted names of the derived variables, not their values. Checks the whole model as the full
        call does, and its result holds no passcode, so a task can show the model's errors that a C(no_log)
        task would hide.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Set the role variables the estate model gives this host, unless the inventory sets them
  ansible.builtin.set_fact:
    "{{ item.key }}": "{{ item.value }}"
  loop: "{{ hostvars | dicomsec.hardening.estate_role_vars(inventory_hostname, groups) | dict2items }}"
  loop_control:
    label: "{{ item.key }}"
  no_log: true
"""

RETURN = r"""
_value:
  description: Role variable names and their derived values, for the variables the host does not already set.
  type: dict
"""

# The modality's DIMSE services, as pacs_identity names them.
SERVICES = ("echo", "find", "get", "move", "store")
_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]")


def _fail(where, what):
    raise AnsibleFilterError("estate model: %s %s" % (where, what))


def _address(where, value):
    """One address in canonical form, as Orthanc compares it with the peer's address as text."""
    try:
        network = parse_network(str(value))
    except ValueError as exc:
        _fail(where, "is not an IP address (%s)" % exc)
    if network.num_addresses != 1:
        _fail(where, "must be one address, not the prefix %s" % network)
    return str(network.network_address)


def _sources(where, values):
    out = []
    for i, value in enumerate(values or []):
        try:
            out.append(str(parse_network(str(value))))
        except ValueError as exc:
            _fail("%s[%d]" % (where, i), "is not an address or prefix (%s)" % exc)
    return out


class _Inventory:
    """Reads single variables of hosts: templating every host's whole variable set, as
    dict(hostvars[host]) would, costs the square of the estate and fails on any variable
    that cannot be templated on the controller."""

    def __init__(self, hostvars):
        self._hostvars = hostvars
        self.hosts = list(hostvars)

    def __contains__(self, host):
        return host in self._hostvars

    def has(self, host, name):
        return name in self._hostvars[host]

    def get(self, host, name, default=None):
        vars_ = self._hostvars[host]
        if name not in vars_:
            return default
        value = vars_[name]
        return default if value is None else value


def _site_of(hostvars, host):
    return str(hostvars.get(host, "dicomsec_site") or "default")


def _hosts_of_site(hostvars, site):
    return [h for h in hostvars.hosts if _site_of(hostvars, h) == site]


def _site_value(hostvars, site, name):
    """A site's setting, from any of its hosts (they share the site group's variables)."""
    for host in _hosts_of_site(hostvars, site):
        value = hostvars.get(host, name)
        if value:
            return value
    return []


def _sites(hostvars):
    return sorted({_site_of(hostvars, h) for h in hostvars.hosts})


def _probe_modality(hostvars, probe):
    """An authorized probe, registered like a modality: its own AE title, address and certificate."""
    where = "probe %s" % probe
    ae = hostvars.get(probe, "dicomsec_calling_ae")
    if not ae:
        _fail(where, "at the authorized position needs dicomsec_calling_ae, the AE title it is registered with")
    address = hostvars.get(probe, "dicomsec_probe_address") or hostvars.get(probe, "ansible_host")
    if not address:
        _fail(where, "needs dicomsec_probe_address or ansible_host, the address it connects from")
    entry = {"name": "probe-" + probe, "ae": ae, "addresses": [address], "services": ["echo", "store"],
             "probe": True}
    subject = hostvars.get(probe, "dicomsec_probe_certificate_subject")
    if subject:
        entry["certificate_subject"] = subject
    return entry


def modalities_of(hostvars, groups, site):
    """The site's registered modalities, and its authorized probes, checked."""
    out = []
    for i, modality in enumerate(_site_value(hostvars, site, "dicomsec_site_modalities")):
        where = "site %s: dicomsec_site_modalities[%d]" % (site, i)
        if not isinstance(modality, dict):
            _fail(where, "must be a dict")
        if not modality.get("ae"):
            _fail(where, "needs ae, the modality's AE title")
        if not modality.get("addresses") and not modality.get("remote"):
            _fail(where, "(%s) needs addresses, where the modality connects from (or remote: true for a "
                  "workstation without a static address that comes through a gateway)" % modality["ae"])
        if modality.get("remote") and not modality.get("certificate_subject"):
            _fail(where, "(%s) is remote: it needs certificate_subject, since no address identifies it"
                  % modality["ae"])
        services = modality.get("services") or ["echo", "store"]
        unknown = [s for s in services if s not in SERVICES]
        if unknown:
            _fail(where, "services %s are not among %s" % (unknown, ", ".join(SERVICES)))
        out.append(dict(modality, services=list(services),
                        addresses=[_address("%s.addresses[%d]" % (where, j), a)
                                   for j, a in enumerate(modality.get("addresses") or [])]))
    for probe in groups.get("probes", []):
        position = hostvars.get(probe, "dicomsec_probe_position", "authorized")
        if _site_of(hostvars, probe) == site and position == "authorized":
            entry = _probe_modality(hostvars, probe)
            entry["addresses"] = [_address("probe %s address" % probe, a) for a in entry["addresses"]]
            out.append(entry)
    return out


def served_sites(hostvars, pacs):
    """Whose modalities a PACS accepts: its own site's, or the sites it lists."""
    return list(hostvars.get(pacs, "dicomsec_pacs_serves") or [_site_of(hostvars, pacs)])


def gateway_of(hostvars, groups, pacs):
    """The gateway in front of a PACS, if one lists it in dicomsec_gateway_for."""
    found = [g for g in groups.get("dicom_gateways", []) if pacs in (hostvars.get(g, "dicomsec_gateway_for") or [])]
    if len(found) > 1:
        _fail("pacs %s" % pacs, "is behind more than one gateway (%s)" % ", ".join(found))
    return found[0] if found else None


def _gateway_address(hostvars, gateway):
    return _address("gateway %s address" % gateway,
                    hostvars.get(gateway, "dicomsec_gateway_address") or hostvars.get(gateway, "ansible_host"))


def _pacs_modalities(hostvars, groups, pacs):
    seen = {}
    out = []
    for site in served_sites(hostvars, pacs):
        for modality in modalities_of(hostvars, groups, site):
            if modality["ae"] in seen:
                _fail("pacs %s" % pacs, "would register the AE title %s twice (sites %s and %s)"
                      % (modality["ae"], seen[modality["ae"]], site))
            seen[modality["ae"]] = site
            out.append(dict(modality, site=site))
    return out


def _pacs_vars(hostvars, groups, pacs):
    modalities = _pacs_modalities(hostvars, groups, pacs)
    gateway = gateway_of(hostvars, groups, pacs)
    port = int(hostvars.get(pacs, "pacs_identity_dicom_port") or 4242)
    address = _gateway_address(hostvars, gateway) if gateway is not None else None
    for m in modalities:
        if not m["addresses"] and address is None:
            _fail("pacs %s" % pacs, "serves the remote modality %s (site %s), which only a PACS behind a gateway "
                  "can: nothing else identifies it" % (m["ae"], m["site"]))
    derived = {
        "pacs_identity_modalities": [
            {"name": _NAME_RE.sub("-", m.get("name") or m["ae"].lower()), "aet": m["ae"],
             # Behind a gateway pacs_identity binds every entry to the gateway's address anyway.
             "host": m["addresses"][0] if m["addresses"] else address,
             "port": int(m.get("port") or 104), "allow": m["services"]}
            for m in modalities],
    }
    if gateway is not None:
        # Pinned: Orthanc accepts its modalities from the gateway's address alone.
        derived["pacs_identity_gateway_address"] = address
        derived["nftables_whitelist_source_sets"] = {"dicom_gateways": [address]}
        sources = ["dicom_gateways"]
    else:
        addresses = sorted({a for m in modalities for a in m["addresses"]})
        derived["nftables_whitelist_source_sets"] = {"modalities": addresses}
        sources = ["modalities"]
    derived["nftables_whitelist_services"] = [{"name": "dicom", "ports": [port], "sources": sources}]
    return derived


def _gateway_vars(hostvars, groups, gateway):
    pacs_hosts = hostvars.get(gateway, "dicomsec_gateway_for") or []
    modalities, users, seen_aes, seen_users = [], [], set(), set()
    for pacs in pacs_hosts:
        if pacs not in hostvars:
            _fail("gateway %s: dicomsec_gateway_for" % gateway, "names %s, which is not in the inventory" % pacs)
        for modality in _pacs_modalities(hostvars, groups, pacs):
            if modality["ae"] in seen_aes:
                continue
            seen_aes.add(modality["ae"])
            entry = {"ae": modality["ae"]}
            if modality["addresses"]:
                entry["sources"] = _sources("modality %s addresses" % modality["ae"], modality["addresses"])
            if modality.get("certificate_subject"):
                entry["subjects"] = [modality["certificate_subject"]]
            modalities.append(entry)
        for site in served_sites(hostvars, pacs):
            for i, user in enumerate(_site_value(hostvars, site, "dicomsec_site_users")):
                where = "site %s: dicomsec_site_users[%d]" % (site, i)
                if not isinstance(user, dict) or not user.get("name"):
                    _fail(where, "needs a name")
                if user["name"] in seen_users:
                    continue
                seen_users.add(user["name"])
                users.append({k: user[k] for k in ("name", "passcode", "passcode_hash", "calling_aes") if k in user})
    # A user's calling AE that no modality has would make the gateway refuse its whole policy;
    # say where it comes from instead.
    for user in users:
        for ae in user.get("calling_aes", []):
            if ae not in seen_aes:
                _fail("user %s" % user["name"], "may use the calling AE %s, which no modality of the PACS behind "
                      "gateway %s registers" % (ae, gateway))
    return {"nginx_stream_proxy_modalities": modalities, "nginx_stream_proxy_users": users}


def _tunnel_vars(hostvars, groups, gateway):
    """The tunnels this gateway is an end of, each end's subnets those of its site."""
    tunnels = []
    for i, tunnel in enumerate(hostvars.get(gateway, "dicomsec_tunnels") or []):
        where = "dicomsec_tunnels[%d]" % i
        if not isinstance(tunnel, dict) or not tunnel.get("name"):
            _fail(where, "needs a name")
        ends = tunnel.get("between") or []
        where = "tunnel %s" % tunnel["name"]
        if len(ends) != 2:
            _fail(where, "needs between: the two ipsec_gateways hosts it joins")
        if gateway not in ends:
            continue
        gateways = []
        for end in ends:
            if end not in hostvars or end not in groups.get("ipsec_gateways", []):
                _fail(where, "joins %s, which is not in the ipsec_gateways group" % end)
            site = _site_of(hostvars, end)
            subnets = _site_value(hostvars, site, "dicomsec_site_subnets")
            if not subnets:
                _fail(where, "joins %s, whose site %s has no dicomsec_site_subnets" % (end, site))
            entry = {"host": end, "subnets": _sources("site %s: dicomsec_site_subnets" % site, subnets),
                     "address": _address("%s: the address of %s" % (where, end),
                                         hostvars.get(end, "dicomsec_ipsec_address") or hostvars.get(end, "ansible_host"))}
            ike_id = hostvars.get(end, "dicomsec_ipsec_id")
            if ike_id:
                entry["id"] = ike_id
            gateways.append(entry)
        tunnels.append(dict({k: v for k, v in tunnel.items() if k != "between"}, gateways=gateways))
    return {"strongswan_tunnel_tunnels": tunnels} if tunnels else {}


def estate_role_vars(hostvars, host, groups, names_only=False):
    """Variables of the roles ``host`` runs, derived from the model, minus those it sets itself."""
    if host not in hostvars:
        raise AnsibleFilterError("estate model: %s is not in the inventory" % host)
    hostvars = _Inventory(hostvars)
    groups = dict(groups)
    derived = {}
    if host in groups.get("pacs", []):
        derived.update(_pacs_vars(hostvars, groups, host))
    if host in groups.get("dicom_gateways", []):
        derived.update(_gateway_vars(hostvars, groups, host))
    if host in groups.get("ipsec_gateways", []):
        derived.update(_tunnel_vars(hostvars, groups, host))
    result = {name: value for name, value in derived.items() if not hostvars.has(host, name)}
    return sorted(result) if names_only else result


class FilterModule:
    def filters(self):
        return {"estate_role_vars": estate_role_vars}
