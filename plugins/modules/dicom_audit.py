#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to the dicomsec.hardening collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type

DOCUMENTATION = r"""
module: dicom_audit
short_description: Run a matrix of association attacks against many DICOM endpoints
version_added: 0.1.0
description:
  - Tries, against every endpoint at once, the associations an attacker or a
    misconfiguration would use, and reports per endpoint which defences held.
  - Each check isolates one layer. AE title checks run over the endpoint's own transport
    with the audit's client certificate, identity checks use the authorized AE titles,
    TLS checks use the authorized AE titles and identity.
  - Outcomes are read from the PDUs the servers send, so an A-ASSOCIATE-RJ is never taken
    for an abort, however many associations run at once.
  - The first association to an endpoint also tests that it answers. An endpoint that
    refuses the connection or never completes the TCP handshake gets one failed V(reachable)
    finding and no other traffic, so a dead endpoint costs at most O(connect_timeout).
  - Every finding has a RV(endpoints[].findings[].verdict) of V(pass), V(fail) or V(inconclusive).
    An answer that overload produces as readily as a refusal (no answer within O(timeout), a
    close or reset before any answer PDU, an A-ASSOCIATE-RJ for load (temporary-congestion,
    local-limit-exceeded), a refused connection to an endpoint that answered before, an operation
    cut off or answered "out of resources") is retried once after O(retry_backoff); if it stays
    so the check is V(inconclusive), never a pass. An endpoint whose first association stays so
    gets an inconclusive V(reachable) finding and no other checks.
  - A check whose answer an association made for another check already proves takes no
    association of its own. An accepted V(any_ae) association (unknown titles, no identity)
    also fails V(called_ae_guess) and V(no_identity); when V(no_identity) is
    selected, the random called AE of V(called_ae_guess) is first tried without identity, so
    its acceptance also fails V(no_identity); V(identity_ignored) and V(authorized) share one association when
    O(identity) is given; the first association also carries the C-FIND, the C-GET and the storage offer of the
    unknown-caller checks. A pass is never inferred; it always comes from a conclusive answer to the check's own
    request.
  - The task fails when a check at or above O(fail_on) fails, or (with O(fail_on_inconclusive)) is inconclusive;
    it never changes anything.
author:
  - dicomsec.hardening contributors (@dicomsec)
requirements:
  - pynetdicom >= 3.0 (and pydicom, which it depends on) where the module runs; it encodes
    every request and decodes every answer.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - dicomsec.hardening.dicom
attributes:
  check_mode:
    support: full
    details: >-
      The checks only open associations, count C-FIND matches, read which storage contexts are accepted and ask for a
      C-GET and a C-MOVE of a study that cannot exist; nothing is stored or retrieved, so they also run in check mode.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
options:
  endpoints:
    description: The DICOM endpoints to audit.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Label for the reports. Defaults to V(host:port).
        type: str
      host:
        description: Address or name of the endpoint.
        type: str
        required: true
      port:
        description: TCP port.
        type: int
        default: 104
      tls:
        description:
          - Whether the endpoint is expected to speak DICOM TLS. Enables the TLS checks and makes
            the other checks connect with TLS using O(tls).
        type: bool
        default: false
      called_ae:
        description: The endpoint's real called AE title.
        type: str
        default: ANY-SCP
  calling_ae:
    description:
      - Calling AE title of the authorized client. Setting it counts as giving credentials, which
        enables the V(authorized) check.
      - When omitted, V(DICOMSEC-PROBE) is used where an authorized title is needed.
    type: str
  concurrency:
    description:
      - Associations in flight at once, across all endpoints. Across a slow network (tens of milliseconds per round
        trip) many endpoints at once are what keeps an estate's audit short.
      - Lowered, if need be, to fit under the open-file limit of the process (C(ulimit -n))
        less 64, so that no endpoint is reported unreachable for want of a socket.
    type: int
    default: 256
  per_host_concurrency:
    description:
      - Associations in flight at once towards any one host, whatever its endpoints. Keeps the audit from overloading
        a PACS, whose answers under overload would only be inconclusive.
    type: int
    default: 4
  timeout:
    description:
      - Seconds one association may take to answer, from the TCP connection (or, without O(connect_timeout),
        from the start) to release.
    type: float
    default: 5
  connect_timeout:
    description:
      - Seconds the name lookup and TCP connect may take, apart from O(timeout); a host that never answers a SYN
        costs this, not O(timeout). TCP retransmits its SYN after one and three seconds, so values of 3 and more
        cover a dropped SYN.
      - Set to V(0) for one deadline, O(timeout), over the whole association.
    type: float
    default: 3
  retry_backoff:
    description: Seconds to wait before the one retry of an answer that overload can produce.
    type: float
    default: 1
  fail_on_inconclusive:
    description:
      - Whether an inconclusive finding at or above O(fail_on) fails the task, as a failed one does. An inconclusive
        check is not a held defence.
      - Either way inconclusive findings are counted in RV(summary.inconclusive) and listed in
        RV(summary.inconclusive_checks).
    type: bool
    default: true
  plain_ports:
    description: Ports V(plain_beside_tls) tries with plain TCP on the host of every TLS endpoint, besides its own.
    type: list
    elements: int
    default: [104, 11112, 4242, 2761, 2762]
  vendor_ae_titles:
    description:
      - AE titles to try besides the vendor defaults the collection ships (DCMTK's, Orthanc's, dcm4chee's, Conquest's and
        other products' and tools' defaults), as calling AE titles by V(vendor_default_ae) and as called AE titles by
        V(called_ae_guess).
    type: list
    elements: str
    default: []
  checks:
    description:
      - Checks to run; when omitted, all but V(plain_beside_tls) and V(vendor_default_ae), which cost an
        association per port or per title and are run when named.
      - V(any_ae) (high) a random calling AE reaches a random called AE.
      - V(called_ae_guess) (medium) with the authorized calling AE, a random called AE title is accepted
        or, when it is not, a vendor default (ANY-SCP, STORESCP, STORESCU, ECHOSCU, ORTHANC,
        DCM4CHEE, CONQUESTSRV1, OSIRIX, HOROS, CLEARCANVAS, PACS, DICOM, AE_TITLE and O(vendor_ae_titles)) other than
        the endpoint's.
      - V(no_identity) (high) the authorized AE titles without user identity are accepted.
      - V(wrong_passcode) (high) a wrong passcode (or a corrupted token) is accepted; needs O(identity) with a secret.
      - V(identity_ignored) (medium) identity with a positive response requested is accepted without a response.
      - V(plaintext_accepted) (high) plain TCP is accepted on a TLS endpoint.
      - V(tls_no_client_cert) (high) a TLS client without a certificate is accepted; needs O(tls.cert_file).
      - V(tls_legacy) (medium) a TLS 1.0/1.1 handshake succeeds.
      - V(cfind_exposure) (high) a random calling AE without identity gets C-FIND answers; only the number of studies is kept.
        When the V(any_ae) association is accepted it asks the query itself. It passes only when the association is refused or
        the server refuses the query (a failure status, the context not accepted, or an A-ABORT); an accepted association whose
        query gets a garbled answer fails, since nothing proved the query is refused; a close or timeout is inconclusive.
      - V(storage_exposure) (high) a random calling AE without identity is offered storage presentation contexts (CT, MR,
        CR, DX, US, MG, NM, Secondary Capture, Encapsulated PDF) and the A-ASSOCIATE-AC accepts any; nothing is stored.
      - V(cget_exposure) (high) a random calling AE without identity gets a STUDY-level C-GET of a study that cannot exist
        answered with success or pending; it passes when the association or the C-GET context is refused or the C-GET is
        answered with a failure or an A-ABORT.
      - V(move_destination_unchecked) (high) with the authorized AE titles and identity, a C-MOVE of a study that cannot
        exist to a random, unregistered destination AE is answered with success (zero sub-operations) or pending. It passes
        on 0xA801 (move destination unknown), when the C-MOVE itself is refused (context, A-ABORT, 0x0124) and on any
        other failure status (Orthanc 1.10 answers 0xC000 to both an unknown destination and a missing study), with
        evidence saying that no reason was given; a cut-off or garbled answer is inconclusive.
      - V(plain_beside_tls) (high) on the host of an endpoint marked TLS, a plain DICOM association on one of O(plain_ports)
        gets any DICOM answer (A-ASSOCIATE-AC, -RJ or A-ABORT). Not in the default set.
      - V(vendor_default_ae) (high) a vendor's default calling AE title (STORESCU, ECHOSCU, FINDSCU, MOVESCU, GETSCU,
        ORTHANC, DCM4CHEE, PYNETDICOM, STORE-SCU, CONQUESTSRV1, OSIRIX, HOROS, CLEARCANVAS, PACS, DICOM, AE_TITLE, ANY-SCU
        and O(vendor_ae_titles)) without identity is accepted on the endpoint's called AE; fails without an association of its
        own when the V(any_ae) association is accepted. Not in the default set.
      - V(no_identity) and V(called_ae_guess) also fail, without an association of their own, when the
        V(any_ae) association is accepted; when both are selected the first association of V(called_ae_guess) carries no
        identity and, accepted, fails V(no_identity) too.
      - V(authorized) (high) the authorized association (O(calling_ae), O(identity), O(tls)) is not accepted or its C-ECHO does not
        succeed (status 0x0000); needs credentials.
    type: list
    elements: str
    choices:
      - any_ae
      - called_ae_guess
      - no_identity
      - wrong_passcode
      - identity_ignored
      - plaintext_accepted
      - tls_no_client_cert
      - tls_legacy
      - cfind_exposure
      - storage_exposure
      - cget_exposure
      - move_destination_unchecked
      - plain_beside_tls
      - vendor_default_ae
      - authorized
  fail_on:
    description: Lowest severity of a failed check that fails the task; V(never) only reports.
    type: str
    choices: [high, medium, never]
    default: high
notes:
  - O(identity) and O(tls) describe the authorized client. The O(tls) settings apply to every
    endpoint with O(endpoints[].tls=true).
  - Endpoints that cannot be reached are reported with a failed V(reachable) finding of severity high; endpoints that
    accept TCP but do not answer the first association, even when asked again, with an inconclusive one.
seealso:
  - module: dicomsec.hardening.dicom_association
"""

EXAMPLES = r"""
- name: Audit the archive's AE title policy, failing on any high-severity weakness
  dicomsec.hardening.dicom_audit:
    endpoints:
      - name: archive
        host: 127.0.0.1
        port: 4242
        called_ae: ORTHANC
    calling_ae: CT01
    checks: [any_ae, called_ae_guess, cfind_exposure, authorized]
  register: audit

- name: Show what the audit found
  ansible.builtin.debug:
    msg: "{{ audit.summary }}"

- name: Audit TLS endpoints with the authorized client's certificate and passcode, report only
  dicomsec.hardening.dicom_audit:
    endpoints:
      - name: pacs-tls
        host: pacs.example.org
        port: 2762
        tls: true
        called_ae: PACS
    calling_ae: CT01
    identity:
      type: username_passcode
      username: ct01
      passcode: "{{ vault_ct01_passcode }}"
    tls:
      ca_file: /etc/dicomsec/ca.pem
      cert_file: /etc/dicomsec/ct01.pem
      key_file: /etc/dicomsec/ct01.key
    fail_on: never
  register: tls_audit

- name: Fail when any TLS check failed, whatever its severity
  ansible.builtin.assert:
    that: tls_audit.endpoints | map(attribute='findings') | flatten | selectattr('passed', 'false') | list | length == 0

- name: Look for what a TLS archive exposes beside its TLS port and which vendor default calling AE gets in
  dicomsec.hardening.dicom_audit:
    endpoints:
      - name: pacs-tls
        host: pacs.example.org
        port: 2762
        tls: true
        called_ae: PACS
    calling_ae: CT01
    tls:
      ca_file: /etc/dicomsec/ca.pem
      cert_file: /etc/dicomsec/ct01.pem
      key_file: /etc/dicomsec/ct01.key
    checks: [plain_beside_tls, vendor_default_ae, storage_exposure, move_destination_unchecked]
    vendor_ae_titles: [SITEPACS, MODALITY1]
    connect_timeout: 2
    fail_on_inconclusive: false

- name: Only the AE title checks, reporting without failing
  dicomsec.hardening.dicom_audit:
    endpoints:
      - host: 127.0.0.1
        port: 11112
        called_ae: PACS
      - host: 127.0.0.1
        port: 11113
    checks: [any_ae, called_ae_guess]
    timeout: 2
    fail_on: never
"""

RETURN = r"""
endpoints:
  description: One report per endpoint, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Endpoint label.
      type: str
    host:
      description: Endpoint host.
      type: str
    port:
      description: Endpoint port.
      type: int
    tls:
      description: Whether the endpoint was audited as a TLS endpoint.
      type: bool
    called_ae:
      description: The endpoint's called AE title.
      type: str
    associations:
      description: Associations attempted against this endpoint, retries included.
      type: int
    retries:
      description: Associations sent again because the first answer was one overload can produce.
      type: int
    findings:
      description: One finding per check that ran.
      type: list
      elements: dict
      contains:
        id:
          description: Check name, or V(reachable) for an endpoint that could not be audited.
          type: str
        severity:
          description: V(high) or V(medium).
          type: str
        passed:
          description: Whether the defence held; false for an inconclusive finding too.
          type: bool
        verdict:
          description:
            - V(pass) (the defence held, read from a conclusive answer to the check's own request), V(fail) or
              V(inconclusive) (no conclusive answer, even after one retry; neither pass nor fail).
          type: str
          choices: [pass, fail, inconclusive]
        evidence:
          description: What was sent and what came back; never a credential or patient data.
          type: str
    skipped:
      description: Selected checks that did not apply, each with C(id) and C(reason).
      type: list
      elements: dict
  sample:
    - name: archive
      host: 127.0.0.1
      port: 4242
      tls: false
      called_ae: ORTHANC
      associations: 13
      retries: 0
      findings:
        - id: any_ae
          severity: high
          passed: true
          verdict: pass
          evidence: "called QK2..., calling R7D...: rejected (calling-ae-not-recognized)"
      skipped:
        - id: tls_legacy
          reason: endpoint is not marked tls
summary:
  description: Totals over all endpoints.
  returned: always
  type: dict
  contains:
    endpoints:
      description: Endpoints audited.
      type: int
    checks:
      description: Findings produced.
      type: int
    passed:
      description: Findings that passed.
      type: int
    failed:
      description: Failed findings by severity (C(high), C(medium)); inconclusive ones are not among them.
      type: dict
    inconclusive:
      description: Inconclusive findings.
      type: int
    inconclusive_checks:
      description: "C(endpoint: check) for every inconclusive finding."
      type: list
      elements: str
    retries:
      description: Associations sent again after the backoff.
      type: int
    unreachable:
      description: Names of endpoints that could not be audited.
      type: list
      elements: str
    associations:
      description: Associations attempted.
      type: int
    elapsed_ms:
      description: Wall time of the whole matrix in milliseconds.
      type: float
    failing:
      description:
        - "C(endpoint: check) for every finding that fails the task: failed at or above O(fail_on) and, with
          O(fail_on_inconclusive), inconclusive at or above it."
      type: list
      elements: str
  sample:
    endpoints: 2
    checks: 14
    passed: 9
    failed: {high: 2, medium: 3}
    inconclusive: 0
    inconclusive_checks: []
    unreachable: []
    associations: 26
    retries: 0
    elapsed_ms: 41.7
    failing: ["router: any_ae", "router: no_identity"]
msg:
  description: One sentence with the totals.
  returned: always
  type: str
  sample: "2 endpoints, 14 checks: 9 passed, failed 2 high / 3 medium, 0 inconclusive"
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_args
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_audit
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_pdu


def main():
    module = AnsibleModule(
        argument_spec=dict(
            endpoints=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    name=dict(type="str"),
                    host=dict(type="str", required=True),
                    port=dict(type="int", default=104),
                    tls=dict(type="bool", default=False),
                    called_ae=dict(type="str", default="ANY-SCP"),
                ),
            ),
            calling_ae=dict(type="str"),
            identity=dicom_args.identity_spec(),
            tls=dicom_args.tls_spec(),
            concurrency=dict(type="int", default=256),
            per_host_concurrency=dict(type="int", default=4),
            timeout=dict(type="float", default=5),
            connect_timeout=dict(type="float", default=3),
            retry_backoff=dict(type="float", default=1),
            fail_on_inconclusive=dict(type="bool", default=True),
            plain_ports=dict(type="list", elements="int", default=list(dicom_audit.PLAIN_PORTS)),
            vendor_ae_titles=dict(type="list", elements="str", default=[]),
            checks=dict(type="list", elements="str", choices=dicom_audit.CHECK_IDS),
            fail_on=dict(type="str", choices=["high", "medium", "never"], default="high"),
        ),
        supports_check_mode=True,
    )
    if not dicom_pdu.HAS_PYNETDICOM:
        module.fail_json(msg=missing_required_lib("pynetdicom"), exception=dicom_pdu.PYNETDICOM_IMPORT_ERROR)

    config = dict(module.params)
    # 0 means one deadline over the whole association, as before the option existed.
    config["connect_timeout"] = config["connect_timeout"] or None
    errors = dicom_audit.validate(config)
    if errors:
        module.fail_json(msg="invalid parameters, nothing was sent: " + "; ".join(errors))

    reports, summary = dicom_audit.audit(config)
    failed = summary["failed"]
    msg = "%d endpoints, %d checks: %d passed, failed %d high / %d medium, %d inconclusive" % (
        summary["endpoints"], summary["checks"], summary["passed"], failed["high"], failed["medium"],
        summary["inconclusive"],
    )
    if summary["unreachable"]:
        msg += "; unreachable: %s" % ", ".join(summary["unreachable"])
    if summary["failing"]:
        module.fail_json(
            msg="%s; failing at or above %s%s: %s" % (
                msg, config["fail_on"], " (inconclusive included)" if config["fail_on_inconclusive"] else "",
                ", ".join(summary["failing"])),
            changed=False,
            endpoints=reports,
            summary=summary,
        )
    module.exit_json(changed=False, msg=msg, endpoints=reports, summary=summary)


if __name__ == "__main__":
    main()
