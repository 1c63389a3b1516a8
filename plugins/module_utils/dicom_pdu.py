# -*- coding: utf-8 -*-
# Copyright: contributors to the dicomsec.hardening collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""DICOM upper layer (PS3.8) and DIMSE (PS3.7) pieces used by the verification modules.

The few requests a verifier sends (an A-ASSOCIATE-RQ, a C-ECHO-RQ, one fixed C-FIND-RQ, the
release and abort PDUs) are encoded here with struct, and the answers are read the same way.
No DICOM library is imported at run time: importing pydicom (which imports numpy) and
pynetdicom costs about 0.2 s per process, more than an audit of a hundred endpoints.  The
unit tests hold every encoder byte for byte to pynetdicom's and every decoder to
pynetdicom's and pydicom's, so the wire format still comes from the library's reading of
the standard.  This file also adds what a verifier needs on top: input validation that runs
before any traffic, names for reject and abort reasons, and bounded parsing of whatever a
peer sends back.
"""

from __future__ import annotations

__metaclass__ = type

import base64
import struct

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
# The probe's own Implementation Class UID (PS3.7 D.3.3.2), a UUID-derived UID under the
# 2.25 root (PS3.5 B.2): it needs no registered organisation root and names this encoder,
# not a library the probe does not use.
IMPLEMENTATION_CLASS_UID = "2.25.276796041901035782959697348919944834382"
IMPLEMENTATION_VERSION = "DICOMSEC_PROBE"


def has_pynetdicom():
    """Whether pynetdicom is installed, found without importing it (the import is slow).

    Nothing on the probe path needs it; ``dicom_association`` still lists it as a requirement.
    """
    # Imported here: only dicom_association asks, and the audit's start-up need not pay.
    import importlib.util  # pylint: disable=import-outside-toplevel

    return importlib.util.find_spec("pynetdicom") is not None


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

# The largest answer to an A-ASSOCIATE-RQ that is read at all.  A real A-ASSOCIATE-AC for the
# few contexts proposed here is well under 2 KiB; even a large SAML server response fits in
# 64 KiB (the item length field is 16 bits).  A bigger declared length is a hostile or
# broken peer, and is refused without reading the body.
MAX_ASSOCIATE_ANSWER = 256 * 1024
# The maximum PDU length this side announces; a P-DATA-TF larger than this (plus slack for
# peers that count the header) breaks the negotiation and is treated as a protocol error.
MAX_PDU_RECEIVED = 65536
MAX_PDATA_ACCEPTED = MAX_PDU_RECEIVED + 1024

RELEASE_RQ_BYTES = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"

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
# Encoding
# ---------------------------------------------------------------------------------------

# Context IDs are odd (PS3.8 9.3.2.2); each DIMSE service gets its own context.
CONTEXT_ECHO = 1
CONTEXT_FIND = 3


def contexts_for(dimse):
    """Return the (context id, abstract syntax) pairs proposed for a DIMSE choice."""
    contexts = [(CONTEXT_ECHO, VERIFICATION_SOP_CLASS)]
    if dimse == "find":
        contexts.append((CONTEXT_FIND, STUDY_ROOT_FIND))
    return contexts


def _ae_bytes(title):
    # AE titles are 16 bytes of the default repertoire, padded with spaces (PS3.8 9.3.2).
    return title.ljust(16).encode("ascii")


def _item(item_type, body):
    """One variable item or sub-item: type, reserved byte, 16-bit length, body (PS3.8 9.3.2)."""
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def _uid_item(item_type, uid):
    # UIDs in upper layer items carry no padding byte, unlike UIDs in data sets; this is
    # also how pynetdicom encodes them (the unit tests compare the bytes).
    return _item(item_type, uid.encode("ascii"))


def build_associate_rq(called_ae, calling_ae, dimse="echo", identity=None, positive_response=False):
    """Return the bytes of an A-ASSOCIATE-RQ (PS3.8 9.3.2).

    Only Implicit VR Little Endian is proposed: every acceptor must support it (PS3.5 10.1),
    and it keeps the C-FIND identifier encoding independent of the negotiation.
    """
    items = [_uid_item(0x10, APPLICATION_CONTEXT)]
    for context_id, abstract in contexts_for(dimse):
        items.append(_item(
            0x20,
            struct.pack(">BBBB", context_id, 0, 0, 0) + _uid_item(0x30, abstract) + _uid_item(0x40, IMPLICIT_VR_LE),
        ))
    user = [
        _item(0x51, struct.pack(">I", MAX_PDU_RECEIVED)),
        _uid_item(0x52, IMPLEMENTATION_CLASS_UID),
        _item(0x55, IMPLEMENTATION_VERSION.encode("ascii")),
    ]
    if identity and identity.get("type"):
        id_type, primary, secondary = identity_fields(identity)
        # PS3.7 D.3.3.7.1: the secondary-field length is there for every type; it is zero
        # unless the type is username and passcode.
        user.append(_item(
            0x58,
            struct.pack(">BBH", id_type, 1 if positive_response else 0, len(primary)) + primary
            + struct.pack(">H", len(secondary)) + secondary,
        ))
    items.append(_item(0x50, b"".join(user)))
    body = (
        struct.pack(">HH", 1, 0)  # protocol version 1, reserved
        + _ae_bytes(called_ae)
        + _ae_bytes(calling_ae)
        + bytes(32)
        + b"".join(items)
    )
    return struct.pack(">BBI", PDU_ASSOCIATE_RQ, 0, len(body)) + body


def abort_bytes(source=0, reason=0):
    """Return an A-ABORT PDU."""
    return struct.pack(">BBIBBBB", PDU_ABORT, 0, 4, 0, 0, source, reason)


def _element(group, element, value):
    """One implicit VR little endian data element (PS3.5 7.1.3)."""
    return struct.pack("<HHI", group, element, len(value)) + value


def _us(value):
    return struct.pack("<H", value)


def _even(value, pad):
    # Values have an even length (PS3.5 7.1.1): UIDs are padded with NUL, text with a space.
    return value + pad if len(value) % 2 else value


def _command_set(elements):
    """Encode a command set, CommandGroupLength first (PS3.7 9.3, E.1)."""
    body = b"".join(_element(0x0000, element, value) for element, value in elements)
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def _pdata(context_id, control, data):
    """One P-DATA-TF PDU with one presentation data value (PS3.8 9.3.5, E.2).

    The requests here are a few dozen bytes, far below any negotiated maximum PDU length,
    so each fits one fragment.
    """
    pdv = struct.pack(">IBB", len(data) + 2, context_id, control) + data
    return struct.pack(">BBI", PDU_P_DATA_TF, 0, len(pdv)) + pdv


_REQUEST_CACHE = {}


def echo_rq_bytes(message_id=1):
    """Return the P-DATA-TF PDUs of a C-ECHO-RQ on the verification context."""
    key = ("echo", message_id)
    if key not in _REQUEST_CACHE:
        command = _command_set([
            (0x0002, _even(VERIFICATION_SOP_CLASS.encode("ascii"), b"\x00")),  # AffectedSOPClassUID
            (0x0100, _us(0x0030)),  # CommandField: C-ECHO-RQ
            (0x0110, _us(message_id)),  # MessageID
            (0x0800, _us(0x0101)),  # CommandDataSetType: no data set
        ])
        _REQUEST_CACHE[key] = _pdata(CONTEXT_ECHO, 0x03, command)
    return _REQUEST_CACHE[key]


def find_identifier_bytes():
    """Return the harmless STUDY-level query, encoded: a universal match that asks only for
    the Study Instance UID, the one return key every study has and that names no patient."""
    return (
        _element(0x0008, 0x0052, _even(b"STUDY", b" "))  # QueryRetrieveLevel
        + _element(0x0020, 0x000D, b"")  # StudyInstanceUID, universal match
    )


def find_rq_bytes(message_id=1):
    """Return the P-DATA-TF PDUs of a STUDY-level C-FIND-RQ on the Study Root context."""
    key = ("find", message_id)
    if key not in _REQUEST_CACHE:
        command = _command_set([
            (0x0002, _even(STUDY_ROOT_FIND.encode("ascii"), b"\x00")),  # AffectedSOPClassUID
            (0x0100, _us(0x0020)),  # CommandField: C-FIND-RQ
            (0x0110, _us(message_id)),  # MessageID
            (0x0700, _us(2)),  # Priority low: a verifier must not crowd out clinical traffic
            (0x0800, _us(0x0001)),  # CommandDataSetType: a data set follows
        ])
        _REQUEST_CACHE[key] = _pdata(CONTEXT_FIND, 0x03, command) + _pdata(CONTEXT_FIND, 0x02, find_identifier_bytes())
    return _REQUEST_CACHE[key]


# ---------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------


def parse_header(header):
    """Return (pdu type, length) from the 6-byte PDU header."""
    return header[0], struct.unpack(">I", header[2:6])[0]


def check_answer_header(pdu_type, length):
    """Raise ProtocolError unless the header can start an answer to an A-ASSOCIATE-RQ."""
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


def decode_reject(pdu):
    """Return the reject dict from a whole A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    return reject_names(pdu[7], pdu[8], pdu[9])


def decode_abort(pdu):
    """Return the abort dict from a whole A-ABORT PDU (PS3.8 9.3.8)."""
    return abort_names(pdu[8], pdu[9])


def parse_accept(pdu):
    """Read what a verifier needs from an A-ASSOCIATE-AC, by walking its items directly.

    Same result as :func:`decode_accept` (the tests hold the two to each other), at a tenth
    of the cost: pynetdicom validates every UID with regular expressions, which dominates
    an audit of thousands of associations.  Every length is checked against its container,
    so a malformed PDU raises ProtocolError instead of reading out of bounds.
    """
    if len(pdu) < 74 or pdu[0] != PDU_ASSOCIATE_AC:
        raise ProtocolError("malformed A-ASSOCIATE-AC: shorter than its fixed fields")
    contexts = {}
    max_pdu = 0
    identity = {"present": False, "length": 0, "server_response": None}
    seen_user_info = False
    offset = 74
    end = len(pdu)
    while offset < end:
        if end - offset < 4:
            raise ProtocolError("malformed A-ASSOCIATE-AC: truncated item header")
        item_type = pdu[offset]
        item_length = struct.unpack(">H", pdu[offset + 2:offset + 4])[0]
        body_start = offset + 4
        body_end = body_start + item_length
        if body_end > end:
            raise ProtocolError("malformed A-ASSOCIATE-AC: item 0x%02x overruns the PDU" % item_type)
        if item_type == 0x21:
            if item_length < 4:
                raise ProtocolError("malformed A-ASSOCIATE-AC: short presentation context item")
            contexts[pdu[body_start]] = pdu[body_start + 2]
        elif item_type == 0x50:
            seen_user_info = True
            sub = body_start
            while sub < body_end:
                if body_end - sub < 4:
                    raise ProtocolError("malformed A-ASSOCIATE-AC: truncated user information sub-item")
                sub_type = pdu[sub]
                sub_length = struct.unpack(">H", pdu[sub + 2:sub + 4])[0]
                sub_end = sub + 4 + sub_length
                if sub_end > body_end:
                    raise ProtocolError("malformed A-ASSOCIATE-AC: sub-item 0x%02x overruns its item" % sub_type)
                if sub_type == 0x51 and sub_length == 4:
                    max_pdu = struct.unpack(">I", pdu[sub + 4:sub_end])[0]
                elif sub_type == 0x59:
                    if sub_length < 2:
                        raise ProtocolError("malformed A-ASSOCIATE-AC: short user identity sub-item")
                    response_length = struct.unpack(">H", pdu[sub + 4:sub + 6])[0]
                    if 2 + response_length > sub_length:
                        raise ProtocolError("malformed A-ASSOCIATE-AC: user identity response overruns its sub-item")
                    response = pdu[sub + 6:sub + 6 + response_length]
                    identity = {"present": True, "length": len(response), "server_response": _b64(response)}
                sub = sub_end
        elif item_type not in (0x10,):
            raise ProtocolError("malformed A-ASSOCIATE-AC: unexpected item type 0x%02x" % item_type)
        offset = body_end
    if not seen_user_info:
        raise ProtocolError("malformed A-ASSOCIATE-AC: no user information item")
    return {"contexts": contexts, "max_pdu": max_pdu, "identity_response": identity}


def decode_accept(pdu):
    """Decode an A-ASSOCIATE-AC with pynetdicom's PDU classes (the reference for
    :func:`parse_accept`; imports pynetdicom, so it is not used on the probe's path).

    Returns a dict with ``contexts`` (context id -> result, 0 is acceptance),
    ``max_pdu`` (the peer's maximum PDU length, 0 is unlimited) and ``identity_response``.
    Raises ProtocolError on a malformed PDU.
    """
    from pynetdicom.pdu import A_ASSOCIATE_AC

    ac = A_ASSOCIATE_AC()
    try:
        ac.decode(pdu)
        contexts = {}
        for item in ac.presentation_context:
            contexts[item.context_id] = item.result_reason
        user_info = ac.user_information
        max_pdu = 0
        identity = {"present": False, "length": 0, "server_response": None}
        if user_info is not None:
            max_pdu = user_info.maximum_length or 0
            if user_info.user_identity is not None:
                response = user_info.user_identity.response or b""
                identity = {
                    "present": True,
                    "length": len(response),
                    "server_response": _b64(response),
                }
    except Exception as exc:  # the library raises several types on malformed input
        raise ProtocolError("malformed A-ASSOCIATE-AC: %s" % exc)
    return {"contexts": contexts, "max_pdu": max_pdu, "identity_response": identity}


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def split_pdvs(body):
    """Yield (context id, control header, data) for each PDV in a P-DATA-TF body."""
    offset = 0
    end = len(body)
    while offset < end:
        if end - offset < 6:
            raise ProtocolError("truncated presentation data value item")
        item_length = struct.unpack(">I", body[offset:offset + 4])[0]
        if item_length < 2 or offset + 4 + item_length > end:
            raise ProtocolError("presentation data value item length %d is inconsistent" % item_length)
        context_id = body[offset + 4]
        control = body[offset + 5]
        yield context_id, control, body[offset + 6:offset + 4 + item_length]
        offset += 4 + item_length


# The command elements a verifier reads (PS3.7 Table E.1-1), all of VR US.
_COMMAND_FIELD = 0x0100
_COMMAND_DATA_SET_TYPE = 0x0800
_STATUS = 0x0900
_COMMAND_WANTED = (_COMMAND_FIELD, _COMMAND_DATA_SET_TYPE, _STATUS)


def decode_command(command_bytes):
    """Return (status, command field, has data set) from an encoded DIMSE command set.

    Command sets are always implicit VR little endian (PS3.7 6.3.1); elements are walked
    with every length checked against the buffer, other elements are skipped unread.
    """
    values = {}
    offset = 0
    end = len(command_bytes)
    while offset < end:
        if end - offset < 8:
            # A stray tail shorter than an element header is ignored, as pydicom does.
            break
        group, element, length = struct.unpack_from("<HHI", command_bytes, offset)
        offset += 8
        if length > end - offset:
            raise ProtocolError(
                "malformed DIMSE command set: element (%04x,%04x) of %d bytes overruns the command"
                % (group, element, length)
            )
        if group == 0x0000 and element in _COMMAND_WANTED:
            if length != 2:
                raise ProtocolError(
                    "malformed DIMSE command set: (0000,%04x) has %d bytes, US has 2" % (element, length)
                )
            values[element] = struct.unpack_from("<H", command_bytes, offset)[0]
        offset += length
    data_set_type = values.get(_COMMAND_DATA_SET_TYPE)
    return values.get(_STATUS), values.get(_COMMAND_FIELD), data_set_type is not None and data_set_type != 0x0101


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
