#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to the dicomsec.hardening collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type

DOCUMENTATION = r"""
module: dicom_association
short_description: Open one DICOM association and assert how the server answers
version_added: 0.1.0
description:
  - Sends one A-ASSOCIATE-RQ to a DICOM server, optionally over TLS and with user identity,
    and reports what the server did, read from the PDU it sent back rather than from a
    library's guess.
  - When the association is accepted it runs one operation (a C-ECHO, a STUDY-level C-FIND
    that reports only how many studies matched, or a C-STORE of one synthetic instance),
    reports its result apart from the association's, and then releases the association.
  - Requests are encoded and answers decoded with pynetdicom's PDU and DIMSE classes; the
    outcome is read from the type of the first PDU the server sends back, so a reject
    followed at once by a reset is still a reject.
  - With O(expect) the task becomes an assertion; a server that answers differently fails
    the task with a message that says what was expected and what happened.
    O(expect=accepted) passes only when the operation worked too, not merely the association.
  - All parameters are checked before any traffic; AE titles, ports, certificate files and
    identity fields that cannot work fail the task at once.
  - The probe never waits longer than O(timeout) (plus O(connect_timeout) when set). A server that stays silent, sends
    garbage, resets the connection or announces a giant PDU gives an outcome, not a hang.
author:
  - dicomsec.hardening contributors (@dicomsec)
requirements:
  - pynetdicom >= 3.0 (and pydicom, which it depends on) where the module runs
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - dicomsec.hardening.dicom
attributes:
  check_mode:
    support: full
    details:
      - C-ECHO and the count-only C-FIND only read, so they run in check mode too and report the real outcome.
      - With O(dimse=store) the association is made and the storage context negotiated, but the C-STORE is not
        sent; RV(operation.result) is V(not_sent) and the task reports that it would have changed the archive.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
options:
  host:
    description: Address or name of the DICOM server.
    type: str
    required: true
  port:
    description: TCP port of the DICOM server.
    type: int
    default: 104
  called_ae:
    description: Called AE title, the title the server is asked to answer as (at most 16 characters).
    type: str
    default: ANY-SCP
  calling_ae:
    description: Calling AE title this side presents (at most 16 characters).
    type: str
    default: DICOMSEC-PROBE
  timeout:
    description:
      - Seconds the whole probe (connect, TLS, association, DIMSE, release) may take; with O(connect_timeout),
        the time after the TCP connection is made.
    type: float
    default: 10
  connect_timeout:
    description:
      - Seconds the name lookup and TCP connect may take, apart from O(timeout), so that a host that never answers
        costs this and not O(timeout). Omitted, O(timeout) covers the connect as well.
    type: float
  bind_address:
    description: Local source address to connect from, to test address-based rules.
    type: str
  dimse:
    description:
      - The operation to run once the association is accepted, reported in RV(operation).
      - V(echo) sends a C-ECHO (Verification); it succeeds on status 0x0000.
      - V(find) sends a STUDY-level C-FIND asking only for Study Instance UIDs and counts the
        matches; no identifier is decoded or returned. It succeeds when the query completes
        with status 0x0000 (after 1000 matches it is cancelled, which also counts as success).
      - V(store) sends a C-STORE of one synthetic Secondary Capture image, which B(writes one
        instance to the archive) and reports the task as changed. It carries PatientName
        C(DICOMSEC^PROBE), PatientID C(DICOMSEC-PROBE), the study description
        C(dicomsec.hardening verification probe - not a patient), fresh UIDs under the 2.25
        root and 16 bytes of pixel data, so it can be found and deleted. It succeeds on
        status 0x0000 or a warning (the instance was stored, PS3.4 B.2.3).
      - V(none) releases right away; only the association is tested.
    type: str
    choices: [echo, find, store, none]
    default: echo
  expect:
    description:
      - Outcome to assert.
      - V(any) never fails on the outcome.
      - V(accepted) needs an A-ASSOCIATE-AC and, unless O(dimse=none), the operation to succeed
        (RV(operation.succeeded)). An association that is accepted and then has its request
        refused fails, with both facts in the message.
      - V(denied) needs anything but an accepted association (reject, abort, TLS failure, refusal, timeout).
      - V(rejected) needs an A-ASSOCIATE-RJ.
      - V(operation_refused) needs the association to be accepted and the server to refuse the
        operation by its own answer (RV(operation.result) V(failure), V(context_rejected) or
        V(aborted)). A close without an A-ABORT, a timeout or a garbled answer is not a refusal
        the server stated, and fails. Orthanc answers this way to a registered modality that
        lacks the permission for the operation.
    type: str
    choices: [any, accepted, denied, rejected, operation_refused]
    default: any
  expect_reason:
    description:
      - Reject reason to assert, by its PS3.8 Table 9-21 name; implies O(expect=rejected).
    type: str
    choices:
      - no-reason-given
      - application-context-not-supported
      - calling-ae-not-recognized
      - called-ae-not-recognized
      - protocol-version-not-supported
      - temporary-congestion
      - local-limit-exceeded
notes:
  - Outcomes are V(accepted), V(rejected) (A-ASSOCIATE-RJ), V(aborted) (A-ABORT, a close or
    reset without an answer, or an answer that is not valid DICOM), V(refused) (TCP connection
    refused or unreachable), V(timeout) and V(tls_failed) (handshake failure or TLS alert,
    including a TLS 1.3 server that refuses the client certificate after the handshake).
  - Only Implicit VR Little Endian is proposed, which every DICOM acceptor supports. Verification
    is always proposed; V(find) adds Study Root Query/Retrieve FIND and V(store) adds
    Secondary Capture Image Storage.
seealso:
  - module: dicomsec.hardening.dicom_audit
"""

EXAMPLES = r"""
- name: Prove the archive answers C-ECHO for the modality's AE title
  dicomsec.hardening.dicom_association:
    host: 127.0.0.1
    port: 4242
    called_ae: ORTHANC
    calling_ae: CT01
    expect: accepted

- name: Prove the modality can store, as it does every day (writes one marked test instance)
  dicomsec.hardening.dicom_association:
    host: 127.0.0.1
    port: 4242
    called_ae: ORTHANC
    calling_ae: CT01
    dimse: store
    expect: accepted

- name: Prove an AE registered for C-ECHO only is let in but may not store
  dicomsec.hardening.dicom_association:
    host: 127.0.0.1
    port: 4242
    called_ae: ORTHANC
    calling_ae: MR02
    dimse: store
    expect: operation_refused

- name: Prove an unknown modality is turned away by an A-ASSOCIATE-RJ on its calling AE
  dicomsec.hardening.dicom_association:
    host: 127.0.0.1
    port: 4242
    called_ae: ORTHANC
    calling_ae: INTRUDER
    expect_reason: calling-ae-not-recognized

- name: Prove that a request without user identity is not accepted
  dicomsec.hardening.dicom_association:
    host: 127.0.0.1
    port: 11112
    called_ae: PACS
    expect: denied

- name: Log in with user name and passcode over TLS with a client certificate
  dicomsec.hardening.dicom_association:
    host: pacs.example.org
    port: 2762
    called_ae: PACS
    calling_ae: CT01
    tls:
      enabled: true
      ca_file: /etc/dicomsec/ca.pem
      cert_file: /etc/dicomsec/ct01.pem
      key_file: /etc/dicomsec/ct01.key
    identity:
      type: username_passcode
      username: ct01
      passcode: "{{ vault_ct01_passcode }}"
      positive_response_requested: true
    expect: accepted

- name: Prove the TLS port refuses TLS 1.1 on purpose
  dicomsec.hardening.dicom_association:
    host: pacs.example.org
    port: 2762
    tls:
      enabled: true
      ca_file: /etc/dicomsec/ca.pem
      min_version: TLSv1.1
      max_version: TLSv1.1
    expect: denied

- name: Count studies an anonymous caller can see (no patient data is returned)
  dicomsec.hardening.dicom_association:
    host: 127.0.0.1
    port: 4242
    called_ae: ORTHANC
    dimse: find
  register: exposure

- name: Fail when anonymous C-FIND returns anything
  ansible.builtin.assert:
    that: exposure.outcome != 'accepted' or (exposure.operation.matches | default(0, true)) == 0
"""

RETURN = r"""
outcome:
  description: What happened to the association.
  returned: always
  type: str
  choices: [accepted, rejected, aborted, refused, timeout, tls_failed]
  sample: rejected
reject:
  description: The A-ASSOCIATE-RJ fields as numbers and PS3.8 names; null unless the server rejected the association.
  returned: always
  type: dict
  contains:
    result:
      description: 1 permanent, 2 transient.
      type: int
    result_name:
      description: V(rejected-permanent) or V(rejected-transient).
      type: str
    source:
      description: 1 service-user, 2 service-provider (ACSE), 3 service-provider (presentation).
      type: int
    source_name:
      description: Name of the source.
      type: str
    reason:
      description: Reason/diagnostic number.
      type: int
    reason_name:
      description: Name of the reason, for example V(calling-ae-not-recognized).
      type: str
  sample: {result: 1, result_name: rejected-permanent, source: 1, source_name: service-user, reason: 3, reason_name: calling-ae-not-recognized}
abort:
  description: Source and reason of an A-ABORT the server sent, with names; null otherwise.
  returned: always
  type: dict
  sample: {source: 2, source_name: service-provider, reason: 0, reason_name: reason-not-specified}
identity_response:
  description:
    - Whether the A-ASSOCIATE-AC carried a User Identity server response, its length and its
      content in base64. Null unless accepted.
    - An accepted request with O(identity.positive_response_requested=true) and V(present=false)
      means the server ignored the identity.
  returned: always
  type: dict
  sample: {present: true, length: 0, server_response: ""}
tls:
  description:
    - Negotiated TLS version, cipher and the server certificate's subject; null without TLS or when the handshake failed.
    - C(certificate_requested) says whether the server asked for a client certificate in the handshake. A server
      that asked, got none and closed the connection before any DICOM answer (nginx's stream module does so after
      its TLS 1.3 handshake, without an alert) gives the outcome V(tls_failed).
  returned: always
  type: dict
  sample: {version: TLSv1.3, cipher: TLS_AES_256_GCM_SHA384, peer_subject: CN=pacs.example.org, certificate_requested: true}
operation:
  description:
    - What happened to the operation O(dimse) asked for; null when O(dimse=none) or when the
      association was not accepted. The association's own outcome is RV(outcome).
  returned: always
  type: dict
  contains:
    name:
      description: V(C-ECHO), V(C-FIND) or V(C-STORE).
      type: str
    result:
      description:
        - V(success), V(warning), V(failure) or V(cancel) from the response's status;
          V(context_rejected) when the server did not accept the operation's presentation
          context; V(aborted) when it sent an A-ABORT instead of a response; V(closed) when the
          connection closed or reset without one; V(timeout); V(protocol_error) when the
          answer was not valid DICOM; V(not_sent) for a C-STORE in check mode.
      type: str
    succeeded:
      description: Whether the operation worked (see O(dimse) for what counts).
      type: bool
    status:
      description: The status of the (final) response, 0 is success; null when none was received.
      type: int
    status_category:
      description: V(success), V(warning), V(failure) or V(cancel); null when no status was received.
      type: str
    matches:
      description: Pending C-FIND responses (matching studies) counted; only for C-FIND.
      type: int
    sop_instance_uid:
      description: The SOP Instance UID of the instance sent; only for C-STORE.
      type: str
    study_instance_uid:
      description: The Study Instance UID of the instance sent; only for C-STORE.
      type: str
    detail:
      description: Extra facts, for example why the result is what it is; null when there are none.
      type: str
  sample: {name: C-ECHO, result: success, succeeded: true, status: 0, status_category: success, detail: null}
source_address:
  description:
    - The local address the TCP connection was made from, as the server's logs record it; on a host with several
      addresses the route chooses it. Null when no connection was made.
  returned: always
  type: str
  sample: 198.18.10.75
latency_ms:
  description: Milliseconds from the start of the TCP connect to the server's answer to the A-ASSOCIATE-RQ.
  returned: always
  type: float
  sample: 0.81
elapsed_ms:
  description: Milliseconds the whole probe took, release included.
  returned: always
  type: float
  sample: 1.7
released:
  description: Whether the association ended with an orderly A-RELEASE.
  returned: always
  type: bool
  sample: true
detail:
  description: Extra facts behind the outcome, for example the TLS alert or the protocol error seen; null when there are none.
  returned: always
  type: str
  sample: "TLS alert from peer: TLSV13_ALERT_CERTIFICATE_REQUIRED"
msg:
  description: One sentence about what happened.
  returned: always
  type: str
  sample: "association to 127.0.0.1:4242 (called ORTHANC, calling INTRUDER) rejected: rejected-permanent service-user, reason 3 calling-ae-not-recognized"
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_args
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_pdu
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_probe

RESULT_KEYS = (
    "outcome",
    "reject",
    "abort",
    "identity_response",
    "tls",
    "operation",
    "source_address",
    "latency_ms",
    "elapsed_ms",
    "released",
    "detail",
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            host=dict(type="str", required=True),
            port=dict(type="int", default=104),
            called_ae=dict(type="str", default="ANY-SCP"),
            calling_ae=dict(type="str", default="DICOMSEC-PROBE"),
            timeout=dict(type="float", default=10),
            connect_timeout=dict(type="float"),
            bind_address=dict(type="str"),
            tls=dicom_args.tls_spec(),
            identity=dicom_args.identity_spec(),
            dimse=dict(type="str", choices=list(dicom_probe.DIMSE_CHOICES), default="echo"),
            expect=dict(type="str", choices=["any", "accepted", "denied", "rejected", "operation_refused"], default="any"),
            expect_reason=dict(type="str", choices=dicom_pdu.REJECT_REASON_NAMES[:-1]),
        ),
        supports_check_mode=True,
    )
    if not dicom_pdu.HAS_PYNETDICOM:
        module.fail_json(msg=missing_required_lib("pynetdicom"), exception=dicom_pdu.PYNETDICOM_IMPORT_ERROR)

    params = module.params
    req = dict(
        host=params["host"],
        port=params["port"],
        called_ae=params["called_ae"],
        calling_ae=params["calling_ae"],
        timeout=params["timeout"],
        connect_timeout=params["connect_timeout"],
        bind_address=params["bind_address"],
        tls=params["tls"] if params["tls"] and params["tls"]["enabled"] else None,
        identity=params["identity"] if params["identity"] and params["identity"]["type"] else None,
        dimse=params["dimse"],
        # A C-STORE writes to the archive: in check mode it is negotiated, not sent.
        store_not_sent=module.check_mode,
    )
    errors = dicom_probe.validate_request(req)
    if errors:
        module.fail_json(msg="invalid parameters, nothing was sent: " + "; ".join(errors))

    result = dicom_probe.probe(req)
    shaped = dict((key, result.get(key)) for key in RESULT_KEYS)
    msg = dicom_probe.outcome_message(result)
    expect = params["expect"]
    if params["expect_reason"] and expect == "any":
        expect = "rejected"
    problem = dicom_probe.expectation_error(result, expect, params["expect_reason"])
    # A stored instance is a change to the archive, and so is one check mode would store.
    operation = result.get("operation") or {}
    changed = operation.get("name") == "C-STORE" and (
        operation.get("succeeded") or operation.get("result") == "not_sent"
    )
    if problem:
        module.fail_json(msg="%s: %s" % (problem, msg), changed=changed, **shaped)
    module.exit_json(changed=changed, msg=msg, **shaped)


if __name__ == "__main__":
    main()
