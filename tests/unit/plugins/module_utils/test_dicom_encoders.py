# -*- coding: utf-8 -*-
"""The collection's own DICOM encoders and decoders against pynetdicom's and pydicom's.

The probe path encodes its requests with struct so that no DICOM library is imported at
run time; these tests hold every byte of that encoding, and every field the decoders read,
to the libraries' reading of the standard.
"""

from __future__ import annotations

import subprocess
import sys
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_FIND_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_FIND
from pynetdicom.dsutils import decode as ds_decode, encode as ds_encode
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import build_context

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_pdu as pdu


def pynetdicom_associate_rq(called_ae, calling_ae, dimse="echo", identity=None, positive_response=False):
    """The A-ASSOCIATE-RQ as pynetdicom's primitives and PDU classes encode it."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = pdu.APPLICATION_CONTEXT
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    contexts = []
    for context_id, abstract in pdu.contexts_for(dimse):
        context = build_context(abstract, [pdu.IMPLICIT_VR_LE])
        context.context_id = context_id
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = pdu.MAX_PDU_RECEIVED
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = pdu.IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = pdu.IMPLEMENTATION_VERSION
    user_information = [max_length, class_uid, version]
    if identity and identity.get("type"):
        id_type, primary, secondary = pdu.identity_fields(identity)
        negotiation = UserIdentityNegotiation()
        negotiation.user_identity_type = id_type
        negotiation.primary_field = primary
        if id_type == 2:
            negotiation.secondary_field = secondary
        negotiation.positive_response_requested = bool(positive_response)
        user_information.append(negotiation)
    primitive.user_information = user_information
    return A_ASSOCIATE_RQ(primitive).encode()


def _pdata(message, context_id):
    return b"".join(P_DATA_TF(p).encode() for p in message.encode_msg(context_id, pdu.MAX_PDU_RECEIVED))


def pynetdicom_echo_rq(message_id):
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = pdu.VERIFICATION_SOP_CLASS
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return _pdata(message, pdu.CONTEXT_ECHO)


def pynetdicom_find_rq(message_id):
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    primitive = C_FIND()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = pdu.STUDY_ROOT_FIND
    primitive.Priority = 2
    primitive.Identifier = BytesIO(ds_encode(identifier, True, True))
    message = C_FIND_RQ()
    message.primitive_to_message(primitive)
    return _pdata(message, pdu.CONTEXT_FIND)


IDENTITIES = [
    None,
    dict(type="username", username="ct01"),
    dict(type="username_passcode", username="ct01", passcode="secret"),
    dict(type="username_passcode", username="ct01", passcode="odd-len"),
    dict(type="kerberos", token="a" * 300),
    dict(type="saml", token="<saml:Assertion/>"),
    dict(type="jwt", token="eyJhbGciOiJSUzI1NiJ9.e30.sig"),
]
TITLES = [("ANY-SCP", "DICOMSEC-PROBE"), ("PACS", "CT01"), ("A" * 16, "B" * 16), (" LEAD", "X")]


@pytest.mark.parametrize("dimse", ["echo", "find", "none"])
@pytest.mark.parametrize("identity", IDENTITIES)
@pytest.mark.parametrize("positive", [False, True])
def test_associate_rq_is_byte_for_byte_pynetdicoms(dimse, identity, positive):
    for called, calling in TITLES:
        ours = pdu.build_associate_rq(called, calling, dimse, identity, positive)
        assert ours == pynetdicom_associate_rq(called, calling, dimse, identity, positive)


def test_associate_rq_round_trips_through_pynetdicoms_decoder():
    data = pdu.build_associate_rq("PACS", "CT01", "find", dict(type="jwt", token="tok"), positive_response=True)
    rq = A_ASSOCIATE_RQ()
    rq.decode(data)
    assert rq.user_information.implementation_class_uid == pdu.IMPLEMENTATION_CLASS_UID
    assert rq.user_information.implementation_version_name == pdu.IMPLEMENTATION_VERSION
    assert rq.user_information.maximum_length == pdu.MAX_PDU_RECEIVED
    assert [(c.context_id, c.abstract_syntax) for c in rq.presentation_context] == [
        (1, pdu.VERIFICATION_SOP_CLASS), (3, pdu.STUDY_ROOT_FIND)
    ]
    assert rq.user_information.user_identity.user_identity_type == 5


def test_implementation_class_uid_is_a_valid_uid():
    uid = pdu.IMPLEMENTATION_CLASS_UID
    assert len(uid) <= 64
    assert all(part.isdigit() and (part == "0" or not part.startswith("0")) for part in uid.split("."))


@pytest.mark.parametrize("message_id", [1, 2, 255, 256, 65535])
def test_echo_rq_is_byte_for_byte_pynetdicoms(message_id):
    assert pdu.echo_rq_bytes(message_id) == pynetdicom_echo_rq(message_id)


@pytest.mark.parametrize("message_id", [1, 7, 65535])
def test_find_rq_is_byte_for_byte_pynetdicoms(message_id):
    assert pdu.find_rq_bytes(message_id) == pynetdicom_find_rq(message_id)


def test_find_identifier_asks_only_for_the_study_instance_uid():
    identifier = ds_decode(BytesIO(pdu.find_identifier_bytes()), True, True)
    assert [e.keyword for e in identifier] == ["QueryRetrieveLevel", "StudyInstanceUID"]
    assert identifier.QueryRetrieveLevel == "STUDY"
    assert identifier.StudyInstanceUID == ""


@pytest.mark.parametrize("result, source, reason", [(1, 1, 3), (1, 1, 7), (2, 3, 2), (1, 2, 2), (2, 2, 1)])
def test_reject_decoder_reads_what_pynetdicom_reads(result, source, reason):
    raw = bytes([3, 0, 0, 0, 0, 4, 0, result, source, reason])
    rj = A_ASSOCIATE_RJ()
    rj.decode(raw)
    assert pdu.decode_reject(raw) == pdu.reject_names(rj.result, rj.source, rj.reason_diagnostic)


@pytest.mark.parametrize("source, reason", [(0, 0), (2, 1), (2, 2), (2, 6)])
def test_abort_decoder_reads_what_pynetdicom_reads(source, reason):
    raw = bytes([7, 0, 0, 0, 0, 4, 0, 0, source, reason])
    ab = A_ABORT_RQ()
    ab.decode(raw)
    assert pdu.decode_abort(raw) == pdu.abort_names(ab.source, ab.reason_diagnostic)


def pydicom_decode_command(command_bytes):
    """The command decoding the probe used before: pydicom reads the whole command set."""
    try:
        command = ds_decode(BytesIO(command_bytes), True, True)
        status = int(command.Status) if "Status" in command else None
        field = int(command.CommandField) if "CommandField" in command else None
        has_data = int(command.CommandDataSetType) != 0x0101 if "CommandDataSetType" in command else False
    except Exception as exc:
        raise pdu.ProtocolError(str(exc))
    return status, field, has_data


def _command(**elements):
    command = Dataset()
    for keyword, value in elements.items():
        setattr(command, keyword, value)
    body = ds_encode(command, True, True)
    group_length = Dataset()
    group_length.CommandGroupLength = len(body)
    return ds_encode(group_length, True, True) + body


COMMANDS = {
    "echo-success": _command(AffectedSOPClassUID="1.2.840.10008.1.1", CommandField=0x8030,
                             MessageIDBeingRespondedTo=1, CommandDataSetType=0x0101, Status=0x0000),
    "find-pending": _command(AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.1", CommandField=0x8020,
                             MessageIDBeingRespondedTo=1, CommandDataSetType=0x0001, Status=0xFF00),
    "find-pending-other-data-set-type": _command(CommandField=0x8020, CommandDataSetType=0x0102, Status=0xFF01),
    "failure-with-comment": _command(CommandField=0x8020, CommandDataSetType=0x0101, Status=0xC000,
                                     ErrorComment="unable to process"),
    "no-status": _command(CommandField=0x8030, CommandDataSetType=0x0101),
    "nothing-known": _command(MessageIDBeingRespondedTo=3),
    "empty": b"",
    "stray-tail": _command(CommandField=0x8030, CommandDataSetType=0x0101, Status=0x0000) + b"\x00\x00\x00",
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_decoder_reads_what_pydicom_reads(name):
    assert pdu.decode_command(COMMANDS[name]) == pydicom_decode_command(COMMANDS[name])


@pytest.mark.parametrize(
    "broken",
    [
        COMMANDS["echo-success"][:-1],  # value cut short
        # Status with a 4-byte value: two values where the standard allows one
        b"\x00\x00\x00\x09\x04\x00\x00\x00\x00\x00\x00\x00",
        # CommandField with an empty value
        b"\x00\x00\x00\x01\x00\x00\x00\x00",
    ],
)
def test_malformed_command_sets_are_protocol_errors_as_with_pydicom(broken):
    with pytest.raises(pdu.ProtocolError):
        pydicom_decode_command(broken)
    with pytest.raises(pdu.ProtocolError):
        pdu.decode_command(broken)


def test_giant_element_length_is_refused_without_reading():
    with pytest.raises(pdu.ProtocolError, match="overruns"):
        pdu.decode_command(b"\x00\x00\x00\x09\xff\xff\xff\xff\x00\x00")


def test_probe_path_imports_no_dicom_library():
    code = (
        "import sys\n"
        "from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_audit, dicom_probe\n"
        "dicom_probe.pdu.build_associate_rq('PACS', 'CT01', 'find', dict(type='jwt', token='t'))\n"
        "dicom_probe.pdu.find_rq_bytes(); dicom_probe.pdu.echo_rq_bytes()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pynetdicom', 'pydicom', 'numpy')))\n"
    )
    path = [p for p in sys.path if p]
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path[:0] = %r\n" % path + code],
        capture_output=True, text=True, check=True,
    )
    assert proc.stdout.strip() == "[]"
