# -*- coding: utf-8 -*-
# Copyright: contributors to the dicomsec.hardening collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The DICOM wire format for the verification modules, through pynetdicom and pydicom.

Every request is encoded and every answer decoded by pynetdicom's PDU and DIMSE classes
(``pynetdicom.pdu``, ``pynetdicom.pdu_primitives``, ``pynetdicom.dimse_messages``) and
pydicom datasets.  What this file adds is what a verifier needs around them:

- input validation that runs before any traffic and names the bad field;
- the PS3.8 names of reject and abort reasons, which playbooks branch on;
- limits on everything a peer sends, checked before the library sees it, so a hostile
  peer cannot make the probe buffer gigabytes or parse a gigantic command set;
- the one synthetic instance ``dimse: store`` writes, clearly marked as a probe.
"""

from __future__ import annotations

__metaclass__ = type

import base64
import functools
import struct
import traceback
import warnings
from io import BytesIO

try:
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from pynetdicom import dsutils
    from pynetdicom import dimse_messages
    from pynetdicom import dimse_primitives
    from pynetdicom import pdu as pn_pdu
    from pynetdicom import pdu_primitives
    from pynetdicom.presentation import build_context

    HAS_PYNETDICOM = True
    PYNETDICOM_IMPORT_ERROR = None
except ImportError:  # the modules report it with missing_required_lib
    HAS_PYNETDICOM = False
    PYNETDICOM_IMPORT_ERROR = traceback.format_exc()

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
# The probe's own Implementation Class UID (PS3.7 D.3.3.2), a UUID-derived UID under the
# 2.25 root (PS3.5 B.2): it needs no registered organisation root, and a PACS log then
# names the verifier rather than the library it is built on.
IMPLEMENTATION_CLASS_UID = "2.25.276796041901035782959697348919944834382"
IMPLEMENTATION_VERSION = "DICOMSEC_PROBE"

# What dimse: store writes: one Secondary Capture image (every storage SCP supports the
# class) of a patient no hospital has, so an administrator can find and delete it.
PROBE_PATIENT_NAME = "DICOMSEC^PROBE"
PROBE_PATIENT_ID = "DICOMSEC-PROBE"
PROBE_STUDY_DESCRIPTION = "dicomsec.hardening verification probe - not a patient"

# PDU types (PS3.8 Table 9-1)
PDU_ASSOCIATE_RQ = 0x01
PDU_ASSOCIATE_AC = 0x02
PDU_ASSOCIATE_RJ = 0x03
PDU_P_DATA_TF = 0x04
PDU_RELEASE_RQ = 0x05
PDU_RELEASE_RP = 0x06
PDU_ABORT = 0x07
PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}

# The largest answer to an A-ASSOCIATE-RQ that is read at all.  A real A-ASSOCIATE-AC for
# the few contexts proposed here is well under 2 KiB; even a large SAML server response
# fits in 64 KiB (the item length field is 16 bits).  A bigger declared length is a hostile
# or broken peer, and is refused without reading the body.
MAX_ASSOCIATE_ANSWER = 256 * 1024
# The maximum PDU length this side announces; a P-DATA-TF larger than this (plus slack for
# peers that count the header) breaks the negotiation and is a protocol error.
MAX_PDU_RECEIVED = 65536
MAX_PDATA_ACCEPTED = MAX_PDU_RECEIVED + 1024
# A DIMSE command set is a few hundred bytes; a peer that sends more is not answering.
MAX_COMMAND_SET = 65536
# A C-FIND identifier asking for one key, or a C-STORE response's data set, is tiny.
MAX_RESPONSE_DATA_SET = 1024 * 1024
# A peer that announces a maximum PDU length this small cannot carry a command set.
MIN_PEER_MAX_PDU = 64

IDENTITY_TYPES = {
    "username": 1,
    "username_passcode": 2,
    "kerberos": 3,
    "saml": 4,
    "jwt": 5,
}

# PS3.8 Table 9-21: A-ASSOCIATE-RJ result, source and reason/diag.
REJECT_RESULTS = {1: "rejected-permanent", 2: "rejected-transient"}
REJECT_SOURCES = {
    1: "service-user",
    2: "service-provider-acse",
    3: "service-provider-presentation",
}
REJECT_REASONS = {
    1: {
        1: "no-reason-given",
        2: "application-context-not-supported",
        3: "calling-ae-not-recognized",
        7: "called-ae-not-recognized",
    },
    2: {1: "no-reason-given", 2: "protocol-version-not-supported"},
    3: {1: "temporary-congestion", 2: "local-limit-exceeded"},
}
# Every reason name a playbook may expect, in the order of the standard's table.
REJECT_REASON_NAMES = [
    "no-reason-given",
    "application-context-not-supported",
    "calling-ae-not-recognized",
    "called-ae-not-recognized",
    "protocol-version-not-supported",
    "temporary-congestion",
    "local-limit-exceeded",
    "reserved",
]

# PS3.8 Table 9-26: A-ABORT source and reason.
ABORT_SOURCES = {0: "service-user", 1: "reserved", 2: "service-provider"}
ABORT_REASONS = {
    0: "reason-not-specified",
    1: "unrecognized-pdu",
    2: "unexpected-pdu",
    4: "unrecognized-pdu-parameter",
    5: "unexpected-pdu-parameter",
    6: "invalid-pdu-parameter-value",
}

# The DIMSE operations a probe can run once the association is accepted: the presentation
# context each is proposed on (context IDs are odd, PS3.8 9.3.2.2), its SOP class, and the
# name of its response message.  Verification is always proposed, so `dimse: none` and
# `dimse: echo` send the same request.
OPERATIONS = {
    "echo": {"name": "C-ECHO", "context_id": 1, "sop_class": VERIFICATION_SOP_CLASS, "response": 0x8030},
    "find": {"name": "C-FIND", "context_id": 3, "sop_class": STUDY_ROOT_FIND, "response": 0x8020},
    "store": {"name": "C-STORE", "context_id": 5, "sop_class": SECONDARY_CAPTURE_STORAGE, "response": 0x8001},
    "move": {"name": "C-MOVE", "context_id": 7, "sop_class": STUDY_ROOT_MOVE, "response": 0x8021},
    "get": {"name": "C-GET", "context_id": 9, "sop_class": STUDY_ROOT_GET, "response": 0x8010},
}
# The storage SOP classes an exposure check offers (PS3.4 Table B.5-1): what modalities in
# a hospital send every day, so an archive that stores anything accepts at least one.
# Only the A-ASSOCIATE-AC is read; nothing is ever sent on these contexts.
STORAGE_EXPOSURE_CLASSES = (
    ("CT", "1.2.840.10008.5.1.4.1.1.2"),
    ("MR", "1.2.840.10008.5.1.4.1.1.4"),
    ("CR", "1.2.840.10008.5.1.4.1.1.1"),
    ("DX", "1.2.840.10008.5.1.4.1.1.1.1"),
    ("US", "1.2.840.10008.5.1.4.1.1.6.1"),
    ("MG", "1.2.840.10008.5.1.4.1.1.1.2"),
    ("NM", "1.2.840.10008.5.1.4.1.1.20"),
    ("SC", SECONDARY_CAPTURE_STORAGE),
    ("PDF", "1.2.840.10008.5.1.4.1.1.104.1"),
)
# Context ids of the storage offer: odd, after the operations' own.
STORAGE_CONTEXT_IDS = dict((11 + 2 * index, name) for index, (name, dummy) in enumerate(STORAGE_EXPOSURE_CLASSES))


class ProtocolError(Exception):
    """The peer sent something that is not a valid answer at this point of the protocol."""


def reject_names(result, source, reason):
    """Return the PS3.8 names of an A-ASSOCIATE-RJ's result, source and reason."""
    return {
        "result": result,
        "source": source,
        "reason": reason,
        "result_name": REJECT_RESULTS.get(result, "reserved"),
        "source_name": REJECT_SOURCES.get(source, "reserved"),
        "reason_name": REJECT_REASONS.get(source, {}).get(reason, "reserved"),
    }


def abort_names(source, reason):
    """Return the PS3.8 names of an A-ABORT's source and reason."""
    return {
        "source": source,
        "reason": reason,
        "source_name": ABORT_SOURCES.get(source, "reserved"),
        # A service-user abort carries no meaningful reason (PS3.8 9.3.8).
        "reason_name": ABORT_REASONS.get(reason, "reserved") if source == 2 else "reason-not-specified",
    }


# ---------------------------------------------------------------------------------------
# Input validation: everything here runs before a single byte is sent.
# ---------------------------------------------------------------------------------------


def ae_title_error(value, name="AE title"):
    """Return why ``value`` is not a usable AE title, or None when it is.

    PS3.5 Table 6.2-1 (AE): at most 16 characters of the default repertoire, no backslash
    (it is the value separator) and no control characters; leading and trailing spaces are
    not significant, so an all-space title is empty.
    """
    if not isinstance(value, str):
        return "%s must be a string" % name
    if len(value) > 16:
        return "%s %r is %d characters long; DICOM allows at most 16" % (name, value, len(value))
    if "\\" in value:
        return "%s %r contains a backslash, the DICOM value separator" % (name, value)
    for char in value:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return "%s %r contains the control character 0x%02x" % (name, value, ord(char))
        if ord(char) > 0x7E:
            return "%s %r contains %r, outside the DICOM default character repertoire" % (name, value, char)
    if not value.strip():
        return "%s must not be empty" % name
    return None


def port_error(value, name="port"):
    """Return why ``value`` is not a TCP port number, or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return "%s must be an integer" % name
    if not 1 <= value <= 65535:
        return "%s %d is out of range 1-65535" % (name, value)
    return None


def identity_error(identity):
    """Return why a user identity request is incomplete, or None.

    ``identity`` is None or a dict with ``type``, ``username``, ``passcode``, ``token``.
    """
    if not identity or not identity.get("type"):
        return None
    id_type = identity["type"]
    if id_type not in IDENTITY_TYPES:
        return "identity.type %r is not one of %s" % (id_type, ", ".join(sorted(IDENTITY_TYPES)))
    if id_type in ("username", "username_passcode") and not identity.get("username"):
        return "identity.type %s needs identity.username" % id_type
    if id_type == "username_passcode" and not identity.get("passcode"):
        return "identity.type username_passcode needs identity.passcode"
    if id_type in ("kerberos", "saml", "jwt") and not identity.get("token"):
        return "identity.type %s needs identity.token" % id_type
    for field in ("username", "passcode", "token"):
        value = identity.get(field)
        if value is not None and len(value.encode("utf-8")) > 65535:
            # The sub-item length fields are 16 bits wide (PS3.7 D.3.3.7.1).
            return "identity.%s is longer than 65535 bytes" % field
    return None


def identity_fields(identity):
    """Return (type number, primary field, secondary field) for a user identity request."""
    id_type = IDENTITY_TYPES[identity["type"]]
    if id_type in (1, 2):
        primary = identity["username"].encode("utf-8")
    else:
        primary = identity["token"].encode("utf-8")
    secondary = identity["passcode"].encode("utf-8") if id_type == 2 else b""
    return id_type, primary, secondary


# ---------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------


def contexts_for(dimse, offer=()):
    """Return the (context id, abstract syntax) pairs proposed for a DIMSE choice.

    ``offer`` adds contexts for an exposure check to read from the A-ASSOCIATE-AC: names of
    OPERATIONS (find, store, move, get) and ``storage`` (STORAGE_EXPOSURE_CLASSES).
    """
    contexts = [(OPERATIONS["echo"]["context_id"], VERIFICATION_SOP_CLASS)]
    wanted = [dimse] + [name for name in offer if name != dimse]
    for name in ("find", "store", "move", "get"):
        if name in wanted:
            contexts.append((OPERATIONS[name]["context_id"], OPERATIONS[name]["sop_class"]))
    if "storage" in wanted:
        contexts.extend(
            (context_id, dict(STORAGE_EXPOSURE_CLASSES)[name]) for context_id, name in sorted(STORAGE_CONTEXT_IDS.items())
        )
    return contexts


def build_associate_rq(called_ae, calling_ae, dimse="echo", identity=None, positive_response=False, offer=()):
    """Return the bytes of an A-ASSOCIATE-RQ (PS3.8 9.3.2), encoded by pynetdicom.

    Only Implicit VR Little Endian is proposed: every acceptor must support it (PS3.5 10.1),
    and it keeps the probe's own data sets independent of the negotiation.  ``offer``: see
    contexts_for.
    """
    primitive = pdu_primitives.A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.called_ae_title = called_ae
    primitive.calling_ae_title = calling_ae
    contexts = []
    for context_id, abstract in contexts_for(dimse, offer):
        context = build_context(abstract, [IMPLICIT_VR_LE])
        context.context_id = context_id
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    max_length = pdu_primitives.MaximumLengthNotification()
    max_length.maximum_length_received = MAX_PDU_RECEIVED
    implementation = pdu_primitives.ImplementationClassUIDNotification()
    implementation.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = pdu_primitives.ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION
    user_information = [max_length, implementation, version]
    if identity and identity.get("type"):
        id_type, primary, secondary = identity_fields(identity)
        negotiation = pdu_primitives.UserIdentityNegotiation()
        negotiation.user_identity_type = id_type
        negotiation.positive_response_requested = bool(positive_response)
        negotiation.primary_field = primary
        if id_type == 2:
            negotiation.secondary_field = secondary
        user_information.append(negotiation)
    primitive.user_information = user_information
    return pn_pdu.A_ASSOCIATE_RQ(primitive).encode()


# Constant PDUs, encoded once per run.
@functools.lru_cache(maxsize=16)
def abort_bytes(source=0, reason=0):
    """Return an A-ABORT PDU (PS3.8 9.3.8)."""
    abort = pn_pdu.A_ABORT_RQ()
    abort.source = source
    abort.reason_diagnostic = reason
    return abort.encode()


@functools.lru_cache(maxsize=1)
def release_rq_bytes():
    """Return an A-RELEASE-RQ PDU (PS3.8 9.3.6)."""
    return pn_pdu.A_RELEASE_RQ().encode()


def _message_pdus(message, context_id, peer_max_pdu):
    """Encode a DIMSE message as P-DATA-TF PDUs that respect the peer's maximum length."""
    return b"".join(
        pn_pdu.P_DATA_TF(primitive).encode() for primitive in message.encode_msg(context_id, peer_max_pdu)
    )


# The same request to a peer with the same maximum PDU length is the same bytes: an audit
# of many endpoints encodes each request once, not once per association.
@functools.lru_cache(maxsize=64)
def echo_request(peer_max_pdu, message_id=1):
    """Return the P-DATA-TF PDUs of a C-ECHO-RQ (PS3.7 9.3.5)."""
    primitive = dimse_primitives.C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = VERIFICATION_SOP_CLASS
    message = dimse_messages.C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return _message_pdus(message, OPERATIONS["echo"]["context_id"], peer_max_pdu)


def find_identifier():
    """The harmless STUDY-level query: a universal match that asks only for the Study
    Instance UID, the one return key every study has and that names no patient."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    return identifier


@functools.lru_cache(maxsize=64)
def find_request(peer_max_pdu, message_id=1):
    """Return the P-DATA-TF PDUs of a STUDY-level C-FIND-RQ on the Study Root context."""
    primitive = dimse_primitives.C_FIND()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = STUDY_ROOT_FIND
    # Low priority: a verifier must not crowd out clinical traffic.
    primitive.Priority = 2
    primitive.Identifier = BytesIO(dsutils.encode(find_identifier(), True, True))
    message = dimse_messages.C_FIND_RQ()
    message.primitive_to_message(primitive)
    return _message_pdus(message, OPERATIONS["find"]["context_id"], peer_max_pdu)


def impossible_study_identifier(study_uid):
    """A STUDY-level retrieve identifier naming one study by its UID, and nothing else."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    return identifier


@functools.lru_cache(maxsize=64)
def move_request(peer_max_pdu, study_uid, destination, message_id=1):
    """Return the P-DATA-TF PDUs of a STUDY-level C-MOVE-RQ (PS3.7 9.3.4) of ``study_uid``
    to the AE title ``destination``, on the Study Root context.

    The exposure check asks for a study that cannot exist (a fresh UID under 2.25), so even
    a server that moves to anyone has nothing to send.
    """
    primitive = dimse_primitives.C_MOVE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = STUDY_ROOT_MOVE
    primitive.Priority = 2
    primitive.MoveDestination = destination
    primitive.Identifier = BytesIO(dsutils.encode(impossible_study_identifier(study_uid), True, True))
    message = dimse_messages.C_MOVE_RQ()
    message.primitive_to_message(primitive)
    return _message_pdus(message, OPERATIONS["move"]["context_id"], peer_max_pdu)


@functools.lru_cache(maxsize=64)
def get_request(peer_max_pdu, study_uid, message_id=1):
    """Return the P-DATA-TF PDUs of a STUDY-level C-GET-RQ (PS3.7 9.3.3) of ``study_uid``
    on the Study Root context; like move_request, for a study that cannot exist."""
    primitive = dimse_primitives.C_GET()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = STUDY_ROOT_GET
    primitive.Priority = 2
    primitive.Identifier = BytesIO(dsutils.encode(impossible_study_identifier(study_uid), True, True))
    message = dimse_messages.C_GET_RQ()
    message.primitive_to_message(primitive)
    return _message_pdus(message, OPERATIONS["get"]["context_id"], peer_max_pdu)


@functools.lru_cache(maxsize=16)
def cancel_request(message_id=1, context_id=3):
    """Return a C-CANCEL-RQ for the request ``message_id`` (PS3.7 9.3.2.3)."""
    primitive = dimse_primitives.C_CANCEL()
    primitive.MessageIDBeingRespondedTo = message_id
    message = dimse_messages.C_CANCEL_RQ()
    message.primitive_to_message(primitive)
    return _message_pdus(message, context_id, 0)


def probe_instance():
    """Return one synthetic Secondary Capture instance, clearly marked as a probe.

    Fresh UIDs under the 2.25 root every time, so a store is never mistaken for a resend of
    an earlier one; 4 x 4 pixels of 8-bit grey, the smallest image every viewer shows.
    """
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE_STORAGE
    ds.SOPInstanceUID = generate_uid(prefix=None)
    ds.StudyInstanceUID = generate_uid(prefix=None)
    ds.SeriesInstanceUID = generate_uid(prefix=None)
    ds.PatientName = PROBE_PATIENT_NAME
    ds.PatientID = PROBE_PATIENT_ID
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDescription = PROBE_STUDY_DESCRIPTION
    ds.SeriesDescription = PROBE_STUDY_DESCRIPTION
    ds.StudyID = "DICOMSEC"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(0, 256, 16))
    return ds


def store_request(instance, peer_max_pdu, message_id=1):
    """Return the P-DATA-TF PDUs of a C-STORE-RQ carrying ``instance`` (PS3.7 9.3.1)."""
    primitive = dimse_primitives.C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = instance.SOPClassUID
    primitive.AffectedSOPInstanceUID = instance.SOPInstanceUID
    primitive.Priority = 2
    primitive.DataSet = BytesIO(dsutils.encode(instance, True, True))
    message = dimse_messages.C_STORE_RQ()
    message.primitive_to_message(primitive)
    return _message_pdus(message, OPERATIONS["store"]["context_id"], peer_max_pdu)


# ---------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------


def parse_header(header):
    """Return (pdu type, length) from the 6-byte PDU header."""
    return header[0], struct.unpack(">I", header[2:6])[0]


def check_answer_header(pdu_type, length):
    """Raise ProtocolError unless the header can start an answer to an A-ASSOCIATE-RQ.

    Runs on the 6-byte header alone, before any body is read.
    """
    if pdu_type not in (PDU_ASSOCIATE_AC, PDU_ASSOCIATE_RJ, PDU_ABORT):
        raise ProtocolError(
            "peer answered with %s instead of A-ASSOCIATE-AC/RJ or A-ABORT"
            % describe_pdu_type(pdu_type)
        )
    if pdu_type in (PDU_ASSOCIATE_RJ, PDU_ABORT) and length != 4:
        raise ProtocolError("%s with length %d (the standard fixes 4)" % (PDU_NAMES[pdu_type], length))
    if length > MAX_ASSOCIATE_ANSWER:
        raise ProtocolError(
            "A-ASSOCIATE-AC declares %d bytes, more than the %d accepted; not read"
            % (length, MAX_ASSOCIATE_ANSWER)
        )
    if pdu_type == PDU_ASSOCIATE_AC and length < 68:
        raise ProtocolError("A-ASSOCIATE-AC of %d bytes is shorter than its fixed fields" % length)


def describe_pdu_type(pdu_type):
    """Name a PDU type byte, or show it in hex when it is not a PDU at all."""
    if pdu_type in PDU_NAMES:
        return PDU_NAMES[pdu_type]
    return "non-DICOM data (first byte 0x%02x)" % pdu_type


def _decode(pdu_class, data, what):
    """Decode a whole PDU with pynetdicom; any failure of the library is a ProtocolError."""
    decoded = pdu_class()
    try:
        with warnings.catch_warnings():
            # pydicom warns about values a hostile peer may send (an invalid UID); the
            # module's output is JSON and must not carry them.
            warnings.simplefilter("ignore")
            decoded.decode(data)
    except Exception as exc:  # the library raises several types (struct, assertion, key) on bad input
        raise ProtocolError("malformed %s: %s" % (what, exc or type(exc).__name__))
    return decoded


def decode_reject(data):
    """Return the reject dict from a whole A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    return dict(_decode_reject(bytes(data)))


# Rejections and aborts are a handful of distinct byte strings in a whole audit.
@functools.lru_cache(maxsize=64)
def _decode_reject(data):
    reject = _decode(pn_pdu.A_ASSOCIATE_RJ, data, "A-ASSOCIATE-RJ")
    return tuple(reject_names(reject.result, reject.source, reject.reason_diagnostic).items())


def decode_abort(data):
    """Return the abort dict from a whole A-ABORT PDU (PS3.8 9.3.8)."""
    return dict(_decode_abort(bytes(data)))


@functools.lru_cache(maxsize=64)
def _decode_abort(data):
    abort = _decode(pn_pdu.A_ABORT_RQ, data, "A-ABORT")
    return tuple(abort_names(abort.source, abort.reason_diagnostic).items())


def decode_accept(data):
    """Read what a verifier needs from an A-ASSOCIATE-AC decoded by pynetdicom.

    Returns a dict with ``contexts`` (context id -> result, 0 is acceptance), ``max_pdu``
    (the peer's maximum PDU length, 0 is unlimited) and ``identity_response``.
    """
    contexts, max_pdu, identity = _decode_accept(bytes(data))
    return {"contexts": dict(contexts), "max_pdu": max_pdu, "identity_response": dict(identity)}


# A server answers every association of the same request with the same bytes; decoding
# is a pure function of them, so an audit decodes each distinct answer once.
@functools.lru_cache(maxsize=256)
def _decode_accept(data):
    accept = _decode(pn_pdu.A_ASSOCIATE_AC, data, "A-ASSOCIATE-AC")
    try:
        contexts = dict((item.context_id, item.result_reason) for item in accept.presentation_context)
        user_info = accept.user_information
        if user_info is None:
            # PS3.8 9.3.3.3: the maximum length sub-item, and so the item, is mandatory.
            raise ProtocolError("malformed A-ASSOCIATE-AC: no user information item")
        max_pdu = user_info.maximum_length or 0
        identity = {"present": False, "length": 0, "server_response": None}
        if user_info.user_identity is not None:
            response = user_info.user_identity.server_response or b""
            identity = {"present": True, "length": len(response), "server_response": _b64(response)}
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError("malformed A-ASSOCIATE-AC: %s" % (exc or type(exc).__name__))
    if 0 < max_pdu < MIN_PEER_MAX_PDU:
        raise ProtocolError("A-ASSOCIATE-AC announces a maximum PDU length of %d bytes, too small for any command" % max_pdu)
    return tuple(contexts.items()), max_pdu, tuple(identity.items())


def _b64(data):
    return base64.b64encode(data).decode("ascii")


# A server answers the same request with the same bytes: the small P-DATA-TF that carries a
# whole response (a C-ECHO-RSP, a final C-FIND-RSP) is decoded once per run. A larger one is
# decoded as it comes, without a copy made to key a cache.
SMALL_PDATA = 1024


def decode_pdata(data):
    """Return the (context id, PDV bytes with control header) pairs of a whole P-DATA-TF."""
    if len(data) <= SMALL_PDATA:
        return list(_decode_small_pdata(bytes(data)))
    return _decode_pdata(data)


@functools.lru_cache(maxsize=256)
def _decode_small_pdata(data):
    return tuple(_decode_pdata(data))


def _decode_pdata(data):
    pdata = _decode(pn_pdu.P_DATA_TF, data, "P-DATA-TF")
    items = []
    for item in pdata.presentation_data_value_items:
        value = item.presentation_data_value or b""
        if not value:
            raise ProtocolError("presentation data value without a message control header")
        items.append((item.presentation_context_id, value))
    return items


class MessageReader:
    """Assembles one DIMSE message from presentation data values, with pynetdicom.

    Fragments are fed one PDV at a time, so a PDU that ends one message and starts the
    next loses nothing, and their sizes are counted before the library buffers them.
    """

    def __init__(self):
        self._message = None
        self.command_bytes = 0
        self.data_bytes = 0
        self.command_done = False

    @property
    def message(self):
        """pynetdicom's message, made when the first fragment needs it (a Dataset each)."""
        if self._message is None:
            self._message = dimse_messages.DIMSEMessage()
        return self._message

    def feed(self, context_id, value):
        """Add one PDV; return True when the message is complete."""
        control = value[0]
        if control & 0x01:
            if self.command_done:
                raise ProtocolError("command fragment after the command set was complete")
            self.command_bytes += len(value) - 1
            if self.command_bytes > MAX_COMMAND_SET:
                raise ProtocolError("DIMSE command set larger than %d bytes" % MAX_COMMAND_SET)
        else:
            if not self.command_done:
                raise ProtocolError("data set fragment where a command was expected")
            self.data_bytes += len(value) - 1
            if self.data_bytes > MAX_RESPONSE_DATA_SET:
                raise ProtocolError("response data set larger than %d bytes" % MAX_RESPONSE_DATA_SET)
        primitive = pdu_primitives.P_DATA()
        primitive.presentation_data_value_list = [[context_id, value]]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                done = self.message.decode_msg(primitive)
        except Exception as exc:  # pydicom and the message table raise several types
            raise ProtocolError("malformed DIMSE message: %s" % (exc or type(exc).__name__))
        if control & 0x03 == 0x03:
            self.command_done = True
        return done

    def command(self):
        """Return (command field, message id being responded to, status, has data set)."""
        command_set = self.message.command_set
        try:
            field = command_set.CommandField
            responded_to = command_set.get("MessageIDBeingRespondedTo")
            status = command_set.get("Status")
            data_set_type = command_set.get("CommandDataSetType")
        except Exception as exc:
            raise ProtocolError("malformed DIMSE command set: %s" % (exc or type(exc).__name__))
        return field, responded_to, status, data_set_type not in (None, 0x0101)

    def suboperations(self):
        """Return the C-MOVE/C-GET sub-operation counts of the message (PS3.7 C.4.2.1.6),
        each None when absent or not a number."""
        counts = {}
        for key, keyword in (("remaining", "NumberOfRemainingSuboperations"),
                             ("completed", "NumberOfCompletedSuboperations"),
                             ("failed", "NumberOfFailedSuboperations"),
                             ("warning", "NumberOfWarningSuboperations")):
            try:
                value = self.message.command_set.get(keyword)
            except Exception:  # a hostile element that pydicom cannot read counts as absent
                value = None
            counts[key] = value if isinstance(value, int) and not isinstance(value, bool) else None
        return counts


def whole_command(context_id, value):
    """Read a PDV that is by itself a whole DIMSE response without a data set (the last
    command fragment, announcing no data set): return (command field, responded-to id,
    status, False, sub-operation counts), or None when the message needs more than this PDV.
    Raises ProtocolError as MessageReader does."""
    if not value or value[0] & 0x03 != 0x03:
        return None
    known = _whole_command(context_id, bytes(value))
    if known is None:
        return None
    return known[:4] + (dict(known[4]),)


# Servers answer the same operation with the same bytes (a C-ECHO-RSP differs from server to
# server, not from association to association): an audit decodes each distinct answer once.
@functools.lru_cache(maxsize=256)
def _whole_command(context_id, value):
    reader = MessageReader()
    if not reader.feed(context_id, value):
        return None
    return reader.command() + (tuple(reader.suboperations().items()),)


def status_category(status):
    """Name a DIMSE status (PS3.7 Annex C)."""
    if status is None:
        return None
    if status == 0x0000:
        return "success"
    if status in (0xFF00, 0xFF01):
        return "pending"
    if status == 0xFE00:
        return "cancel"
    if status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
        return "warning"
    return "failure"
