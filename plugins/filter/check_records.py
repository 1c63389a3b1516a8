# Copyright: dicomsec.hardening contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Turn what a position's checks returned into report records, all at once.

``audit_records`` reads a ``dicom_audit`` result, ``association_records`` the registered
results of a task that looped ``dicom_association`` over the probe matrix. Both return one
record per check in the form ``dicom_report`` takes (site, control, position, role, target,
address, request, expected, outcome, verdict, evidence, time). They replace ``set_fact``
loops that templated one record per item: on an estate of a dozen positions with a few
dozen checks each, those loops were minutes of a verification run, and what a record says
is easier to read and to test as code.

Neither reads a secret: a record says which identity type and whether a client certificate
was presented, never a passcode, token or key.
"""

from __future__ import annotations

import datetime

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

DOCUMENTATION = r"""
name: audit_records
short_description: Report records from a dicom_audit result, one per finding
version_added: 0.3.0
description:
  - One record per finding of each endpoint in a C(dicomsec.hardening.dicom_audit) result, in the form
    C(dicomsec.hardening.dicom_report) takes.
  - Where this position must be refused (the endpoint is in O(unwelcome)), an endpoint that does not
    answer (C(reachable) finding not passed) is the goal, and so is a refused authorized association;
    an accepted authorized association is the failure.
  - Elsewhere the finding's own verdict is kept (V(pass), V(fail) or V(inconclusive)).
  - The companion filter C(dicomsec.hardening.association_records) does the same for the registered results
    of a C(dicomsec.hardening.dicom_association) loop over verify.yml's probe matrix.
options:
  _input:
    description: The registered C(dicom_audit) result.
    type: dict
    required: true
  position:
    description: The probe's inventory name.
    type: str
    required: true
  role:
    description: The position's role (V(authorized), V(wrong_segment), V(outsider), ...).
    type: str
    required: true
  targets:
    description: The audited endpoints by name, each with its C(site).
    type: dict
    default: {}
  unwelcome:
    description: The names of the endpoints that must refuse this position.
    type: list
    elements: str
    default: []
  expectations:
    description: What each check id requires, in words, for the record's C(expected).
    type: dict
    default: {}
  calling_ae:
    description: The authorized calling AE title the audit presented; empty means C(DICOMSEC-PROBE).
    type: str
  probe_tls:
    description: The position's C(dicomsec_probe_tls); only whether it names a certificate is read.
    type: dict
  probe_identity:
    description: The position's C(dicomsec_probe_identity); only its type is read.
    type: dict
"""

EXAMPLES = r"""
- name: Record each finding for the reports
  ansible.builtin.set_fact:
    dicomsec__audit_records: >-
      {{ dicomsec_audit_result | dicomsec.hardening.audit_records(
           position=inventory_hostname, role=dicomsec__position_role, targets=_audit_targets,
           unwelcome=_unwelcome, expectations=dicomsec__audit_expectations,
           calling_ae=dicomsec_calling_ae | default(''), probe_tls=dicomsec_probe_tls | default({}),
           probe_identity=dicomsec_probe_identity | default({})) }}
"""

RETURN = r"""
_value:
  description: The records, in the order of the result's endpoints and their findings.
  type: list
  elements: dict
"""

# What a finding's verdict says in the record's outcome column.
_OUTCOME = {"pass": "defence held", "fail": "defence did not hold", "inconclusive": "could not tell"}


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bool(value):
    return boolean(value, strict=False)


def _mapping(value, name):
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise AnsibleFilterError("%s must be a mapping, not %s" % (name, type(value).__name__))
    return value


def _has_certificate(probe_tls):
    return len(_mapping(probe_tls, "probe_tls").get("cert_file") or "") > 0


def _identity_type(probe_identity):
    return _mapping(probe_identity, "probe_identity").get("type") or "none"


def audit_records(result, position, role, targets=None, unwelcome=None, expectations=None,
                  calling_ae=None, probe_tls=None, probe_identity=None):
    result = _mapping(result, "the dicom_audit result")
    targets = _mapping(targets, "targets")
    expectations = _mapping(expectations, "expectations")
    unwelcome = set(unwelcome or [])
    has_certificate = _has_certificate(probe_tls)
    identity = _identity_type(probe_identity)
    records = []
    for endpoint in result.get("endpoints") or []:
        name = endpoint["name"]
        tls = _bool(endpoint.get("tls", False))
        for finding in endpoint.get("findings") or []:
            check = finding["id"]
            passed = bool(finding.get("passed"))
            outsider_unreachable = name in unwelcome and check == "reachable"
            refused_here = name in unwelcome and check == "authorized"
            if outsider_unreachable:
                verdict = "pass"
                outcome = "denied: unreachable from this position, as a host outside the whitelist should find it"
            elif refused_here:
                verdict = "fail" if passed else "pass"
                outcome = ("accepted from a position that must be refused" if passed
                           else "denied: the authorized association was refused from this position, as it should be")
            else:
                verdict = finding.get("verdict") or ("pass" if passed else "fail")
                outcome = _OUTCOME.get(verdict, verdict)
            if refused_here:
                expected = "the association this position presents is refused: from where it stands no one is registered here"
            else:
                expected = expectations.get(check, "the defence holds")
            records.append({
                "site": (targets.get(name) or {}).get("site", "default"),
                "control": check,
                "position": position,
                "role": role,
                "target": name,
                "address": "%s:%s" % (endpoint.get("host"), endpoint.get("port")),
                "request": {
                    "check": check,
                    "called_ae": endpoint.get("called_ae"),
                    "authorized_calling_ae": calling_ae or "DICOMSEC-PROBE",
                    "tls": tls,
                    "client_certificate": tls and has_certificate,
                    "identity": identity,
                },
                "expected": expected,
                "outcome": outcome,
                "verdict": verdict,
                "severity": finding.get("severity", ""),
                "evidence": finding.get("evidence", ""),
                "time": _now(),
            })
    return records


def association_records(results, position, role, probe_tls=None, probe_identity=None):
    """One record per registered result of a dicom_association loop over the probe matrix.

    Each result's ``item`` is the check (playbooks/vars/probe_matrix.yml): site, control,
    target, host, port, AE titles, dimse, via, tls, cert, identity (none, wrong or the
    position's own), expected, the reject code it must carry and whether a TLS refusal
    fails it (tls_refusal_fails) or is the control at work (tls_must_fail).
    """
    has_certificate = _has_certificate(probe_tls)
    identity_type = _identity_type(probe_identity)
    records = []
    for index, result in enumerate(results or []):
        if not isinstance(result, dict) or not isinstance(result.get("item"), dict):
            raise AnsibleFilterError("results[%d] is not a registered loop result with its check as item" % index)
        check = result["item"]
        outcome = result.get("outcome") or ""
        # A refusal in the TLS handshake, where the position presented valid credentials,
        # proves nothing about where it stands: the check fails.
        tls_refused = bool(check.get("tls_refusal_fails")) and outcome == "tls_failed"
        # Where the check is that the TLS layer refuses (no client certificate), any other
        # refusal is not the control at work.
        tls_not_refused = bool(check.get("tls_must_fail")) and outcome not in ("", "tls_failed")
        reject = result.get("reject")
        expected_code = check.get("reject")
        wrong_code = False
        if expected_code is not None and reject is not None:
            code = [int(reject.get(part) or 0) for part in ("result", "source", "reason")]
            wrong_code = code != [int(part) for part in expected_code]
        tls = _bool(check.get("tls", False))
        if check.get("identity") == "none":
            identity = "none"
        else:
            identity = identity_type + (" (wrong)" if check.get("identity") == "wrong" else "")
        via = check.get("via")
        evidence = ""
        if tls_refused:
            evidence += ("refused in the TLS handshake although its credentials are valid: dicomsec_probe_tls of %s"
                         " is not accepted by %s, so its address was not what was refused; " % (position, check.get("target")))
        if tls_not_refused:
            evidence += ("denied, but not in the TLS handshake (%s): the client certificate requirement was not what"
                         " refused it; " % outcome)
        if wrong_code:
            evidence += "rejected with %s/%s/%s, not %s; " % (
                reject.get("result"), reject.get("source"), reject.get("reason"),
                "/".join(str(part) for part in expected_code))
        evidence += result.get("msg") or ""
        # No outcome at all: the probe never ran (its parameters were refused), so the
        # check proved nothing either way.
        if "outcome" not in result:
            verdict = "inconclusive"
        elif _bool(result.get("failed", False)) or tls_refused or tls_not_refused or wrong_code:
            verdict = "fail"
        else:
            verdict = "pass"
        records.append({
            "site": check.get("site"),
            "control": check.get("control"),
            "position": position,
            "role": role,
            "target": check.get("target"),
            "address": "%s:%s" % (check.get("host"), check.get("port")),
            "request": {
                "calling_ae": check.get("calling_ae"),
                "called_ae": check.get("called_ae"),
                "dimse": check.get("dimse"),
                "via": via if via == "direct" else "gateway to %s" % check.get("pacs"),
                "tls": tls,
                "client_certificate": tls and bool(check.get("cert")) and has_certificate,
                "identity": identity,
            },
            "expected": check.get("expected"),
            "association": {
                "outcome": result.get("outcome"),
                "reject": reject,
                "abort": result.get("abort"),
                "tls": result.get("tls"),
                "operation": result.get("operation"),
                "msg": result.get("msg") or "",
            },
            "verdict": verdict,
            "evidence": evidence,
            "time": _now(),
        })
    return records


class FilterModule:
    def filters(self):
        return {"audit_records": audit_records, "association_records": association_records}
