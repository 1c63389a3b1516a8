# -*- coding: utf-8 -*-
"""What the probe sends is what a DICOM reader reads, and what a peer sends back can be
malformed, truncated or lying about its lengths without breaking the decoders.

The requests are built by pynetdicom; these tests read them back with pynetdicom's and
pydicom's decoders, the way an SCP would, and check the facts a verifier depends on.
"""

from __future__ import annotations

import random
import struct

import pytest
from dicom_pdus import accept_pdu
from pydicom.uid import UID
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dsutils import decode
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_pdu as pdu

PASSCODE = dict(type="username_passcode", username="ct01", passcode="correct-horse")


def _read_rq(data):
    rq = A_ASSOCIATE_RQ()
    rq.decode(data)
    return rq


def _read_message(data):
    """Decode the DIMSE message in a run of P-DATA-TF PDUs as an SCP would."""
    message = DIMSEMessage()
    offset = 0
    done = False
    while offset < len(data):
        length = struct.unpack(">I", data[offset + 2:offset + 6])[0]
        pdata = P_DATA_TF()
        pdata.decode(data[offset:offset + 6 + length])
        done = message.decode_msg(pdata.to_primitive())
        offset += 6 + length
    assert done, "the message did not complete"
    return message


@pytest.mark.parametrize("dimse, abstract", [
    ("none", ["1.2.840.10008.1.1"]),
    ("echo", ["1.2.840.10008.1.1"]),
    ("find", ["1.2.840.10008.1.1", pdu.STUDY_ROOT_FIND]),
    ("store", ["1.2.840.10008.1.1", pdu.SECONDARY_CAPTURE_STORAGE]),
])
def test_associate_rq_proposes_the_operations_context_on_implicit_vr_only(dimse, abstract):
    rq = _read_rq(pdu.build_associate_rq("PACS", "CT01", dimse))
    assert rq.called_ae_title == "PACS" and rq.calling_ae_title == "CT01"
    assert [c.abstract_syntax for c in rq.presentation_context] == abstract
    assert all(c.transfer_syntax == [pdu.IMPLICIT_VR_LE] for c in rq.presentation_context)
    assert [c.context_id for c in rq.presentation_context] == [
        pdu.OPERATIONS["echo"]["context_id"]] + ([pdu.OPERATIONS[dimse]["context_id"]] if len(abstract) > 1 else [])


def test_associate_rq_names_the_probe_and_its_maximum_pdu():
    user = _read_rq(pdu.build_associate_rq("PACS", "CT01")).user_information
    assert user.implementation_class_uid == pdu.IMPLEMENTATION_CLASS_UID
    assert UID(pdu.IMPLEMENTATION_CLASS_UID).is_valid
    assert user.implementation_version_name == pdu.IMPLEMENTATION_VERSION
    assert user.maximum_length == pdu.MAX_PDU_RECEIVED


@pytest.mark.parametrize("positive", [False, True])
def test_associate_rq_carries_username_and_passcode(positive):
    identity = _read_rq(pdu.build_associate_rq("PACS", "CT01", "echo", PASSCODE, positive)).user_information.user_identity
    assert identity.user_identity_type == 2
    assert identity.primary_field == b"ct01"
    assert identity.secondary_field == b"correct-horse"
    assert bool(identity.positive_response_requested) is positive


def test_associate_rq_carries_a_token_without_a_secondary_field():
    token = dict(type="jwt", token="eyJhbGciOiJSUzI1NiJ9.e30.sig")
    identity = _read_rq(pdu.build_associate_rq("PACS", "CT01", "echo", token)).user_information.user_identity
    assert identity.user_identity_type == 5
    assert identity.primary_field == token["token"].encode()
    assert not identity.secondary_field


def test_associate_rq_without_identity_has_no_identity_sub_item():
    assert _read_rq(pdu.build_associate_rq("PACS", "CT01")).user_information.user_identity is None


def test_echo_request_is_a_c_echo_rq_on_the_verification_context():
    message = _read_message(pdu.echo_request(16384))
    assert message.context_id == pdu.OPERATIONS["echo"]["context_id"]
    assert message.command_set.CommandField == 0x0030
    assert message.command_set.AffectedSOPClassUID == pdu.VERIFICATION_SOP_CLASS
    assert message.command_set.CommandDataSetType == 0x0101


def test_find_request_asks_only_for_the_study_instance_uid_at_low_priority():
    message = _read_message(pdu.find_request(16384))
    assert message.command_set.CommandField == 0x0020
    assert message.command_set.Priority == 2
    identifier = decode(message.data_set, True, True)
    assert identifier.QueryRetrieveLevel == "STUDY"
    # A universal match on one key that names no patient, and nothing else.
    assert [elem.keyword for elem in identifier] == ["QueryRetrieveLevel", "StudyInstanceUID"]
    assert identifier.StudyInstanceUID == ""


def test_store_request_carries_one_clearly_marked_synthetic_instance():
    instance = pdu.probe_instance()
    message = _read_message(pdu.store_request(instance, 16384))
    assert message.context_id == pdu.OPERATIONS["store"]["context_id"]
    assert message.command_set.CommandField == 0x0001
    assert message.command_set.AffectedSOPInstanceUID == instance.SOPInstanceUID
    stored = decode(message.data_set, True, True)
    assert str(stored.PatientName) == "DICOMSEC^PROBE"
    assert stored.PatientID == "DICOMSEC-PROBE"
    assert "not a patient" in stored.StudyDescription
    assert stored.SOPClassUID == pdu.SECONDARY_CAPTURE_STORAGE
    assert len(stored.PixelData) == stored.Rows * stored.Columns


def test_every_probe_instance_has_fresh_uids_under_the_uuid_root():
    first, second = pdu.probe_instance(), pdu.probe_instance()
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert getattr(first, keyword) != getattr(second, keyword)
        assert getattr(first, keyword).startswith("2.25.")
        assert UID(getattr(first, keyword)).is_valid


def test_store_request_respects_a_small_peer_maximum_pdu():
    data = pdu.store_request(pdu.probe_instance(), 128)
    offset = 0
    while offset < len(data):
        length = struct.unpack(">I", data[offset + 2:offset + 6])[0]
        assert length <= 128
        offset += 6 + length
    assert _read_message(data).command_set.CommandField == 0x0001


def test_release_and_abort_are_the_standards_fixed_pdus():
    assert pdu.release_rq_bytes() == b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    assert pdu.abort_bytes(2, 1) == b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x01"


@pytest.mark.parametrize("result, source, reason, name", [
    (1, 1, 3, "calling-ae-not-recognized"),
    (1, 1, 7, "called-ae-not-recognized"),
    (2, 3, 1, "temporary-congestion"),
    (1, 2, 2, "protocol-version-not-supported"),
    (1, 1, 9, "reserved"),
])
def test_reject_is_decoded_and_named(result, source, reason, name):
    data = bytes([3, 0, 0, 0, 0, 4, 0, result, source, reason])
    assert pdu.decode_reject(data)["reason_name"] == name


# --- hostile answers --------------------------------------------------------------------


def _response(command_field, status, message_id=1, data_set=None, context_id=1):
    """A DIMSE response built with pynetdicom, as P-DATA-TF bytes."""
    from dicom_pdus import dimse_response_pdus

    return dimse_response_pdus(command_field, status, message_id, data_set, context_id)


def _feed_all(data):
    """Feed a run of P-DATA-TF PDUs to a MessageReader; return the command or raise."""
    reader = pdu.MessageReader()
    offset = 0
    while offset + 6 <= len(data):
        length = struct.unpack(">I", data[offset + 2:offset + 6])[0]
        for context_id, value in pdu.decode_pdata(data[offset:offset + 6 + length]):
            if reader.feed(context_id, value):
                return reader.command()
        offset += 6 + length
    return None


def test_a_c_echo_response_is_read_with_its_status():
    assert _feed_all(_response(0x8030, 0xC000)) == (0x8030, 1, 0xC000, False)


def test_a_c_find_pending_response_with_its_identifier_is_read_whole():
    from pydicom.dataset import Dataset

    identifier = Dataset()
    identifier.StudyInstanceUID = "1.2.3"
    field, dummy, status, has_data = _feed_all(_response(0x8020, 0xFF00, data_set=identifier, context_id=3))
    assert (field, status, has_data) == (0x8020, 0xFF00, True)


def test_a_data_fragment_before_the_command_is_a_protocol_error():
    reader = pdu.MessageReader()
    with pytest.raises(pdu.ProtocolError, match="data set fragment"):
        reader.feed(1, b"\x02abc")


def test_an_oversized_command_set_is_refused_before_it_is_buffered():
    reader = pdu.MessageReader()
    with pytest.raises(pdu.ProtocolError, match="command set larger"):
        for dummy in range(100):
            reader.feed(1, b"\x01" + b"\x00" * 4096)


def test_an_oversized_response_data_set_is_refused():
    reader = pdu.MessageReader()
    data = _response(0x8020, 0xFF00, context_id=3)
    # A command that announces a data set, then an endless one.
    command = bytearray(data)
    (context_id, value), = pdu.decode_pdata(bytes(command))
    # CommandDataSetType 0x0101 (none) -> 0x0001 (present)
    value = value.replace(b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x01", b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x00")
    assert reader.feed(context_id, value) is False
    with pytest.raises(pdu.ProtocolError, match="data set larger"):
        for dummy in range(1000):
            reader.feed(context_id, b"\x00" + b"\x00" * 4096)


def _mutations(seed_pdu, count, rng):
    """Truncations, lying lengths in both directions, and random byte flips of a valid PDU."""
    yield b""
    for cut in range(0, len(seed_pdu), max(1, len(seed_pdu) // 40)):
        yield seed_pdu[:cut]
    for offset in range(2, min(len(seed_pdu), 120)):
        for value in (0x00, 0x01, 0x7F, 0xFF):
            mutated = bytearray(seed_pdu)
            mutated[offset] = value
            yield bytes(mutated)
    for dummy in range(count):
        mutated = bytearray(seed_pdu)
        for dummy_flip in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        if rng.random() < 0.3:
            mutated = mutated[:rng.randrange(1, len(mutated) + 1)]
        if rng.random() < 0.2:
            mutated += bytes(rng.randrange(256) for dummy_extra in range(rng.randint(1, 40)))
        yield bytes(mutated)


def test_mutated_accepts_decode_or_raise_protocol_error_only():
    rng = random.Random(20261201)
    seed = accept_pdu("PACS", "CT01", ((1, 0), (3, 0), (5, 3)), 16384, b"session")
    seen = 0
    for data in _mutations(seed, 3000, rng):
        try:
            decoded = pdu.decode_accept(data)
        except pdu.ProtocolError:
            continue
        seen += 1
        assert isinstance(decoded["contexts"], dict)
        assert isinstance(decoded["max_pdu"], int)
    # Some mutations keep the PDU valid (a changed UID digit, a changed AE title byte).
    assert seen > 0


def test_mutated_dimse_responses_decode_or_raise_protocol_error_only():
    rng = random.Random(7)
    seed = _response(0x8030, 0x0000)
    for data in _mutations(seed, 3000, rng):
        try:
            items = pdu.decode_pdata(data)
            reader = pdu.MessageReader()
            for context_id, value in items:
                if reader.feed(context_id, value):
                    reader.command()
                    break
        except pdu.ProtocolError:
            continue


def test_mutated_rejects_and_aborts_decode_or_raise_protocol_error_only():
    rng = random.Random(11)
    for seed, decoder in ((b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x03", pdu.decode_reject),
                          (b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00", pdu.decode_abort)):
        for data in _mutations(seed, 500, rng):
            try:
                decoder(data)
            except pdu.ProtocolError:
                continue


# --- C-MOVE and C-GET: requests read back as an SCP reads them, answers fuzzed ----------------


def test_move_request_asks_for_one_study_to_the_destination_at_low_priority():
    message = _read_message(pdu.move_request(16384, "2.25.42", "DESTAE"))
    assert message.context_id == pdu.OPERATIONS["move"]["context_id"]
    assert message.command_set.CommandField == 0x0021
    assert message.command_set.AffectedSOPClassUID == pdu.STUDY_ROOT_MOVE
    assert message.command_set.MoveDestination == "DESTAE"
    assert message.command_set.Priority == 2
    identifier = decode(message.data_set, True, True)
    assert [elem.keyword for elem in identifier] == ["QueryRetrieveLevel", "StudyInstanceUID"]
    assert identifier.QueryRetrieveLevel == "STUDY" and identifier.StudyInstanceUID == "2.25.42"


def test_get_request_asks_for_one_study_on_the_get_context():
    message = _read_message(pdu.get_request(16384, "2.25.43", message_id=2))
    assert message.context_id == pdu.OPERATIONS["get"]["context_id"]
    assert message.command_set.CommandField == 0x0010
    assert message.command_set.MessageID == 2
    assert message.command_set.AffectedSOPClassUID == pdu.STUDY_ROOT_GET
    assert decode(message.data_set, True, True).StudyInstanceUID == "2.25.43"


def test_the_exposure_offer_proposes_retrieve_and_storage_contexts_once_each():
    rq = _read_rq(pdu.build_associate_rq("PACS", "CT01", "none", offer=("find", "get", "storage", "move")))
    ids = [c.context_id for c in rq.presentation_context]
    assert len(ids) == len(set(ids)) and all(i % 2 == 1 for i in ids)
    syntaxes = {c.context_id: c.abstract_syntax for c in rq.presentation_context}
    assert syntaxes[pdu.OPERATIONS["get"]["context_id"]] == pdu.STUDY_ROOT_GET
    assert syntaxes[pdu.OPERATIONS["move"]["context_id"]] == pdu.STUDY_ROOT_MOVE
    for context_id, name in pdu.STORAGE_CONTEXT_IDS.items():
        assert syntaxes[context_id] == dict(pdu.STORAGE_EXPOSURE_CLASSES)[name]
    # Without an offer the request is what it always was.
    assert pdu.build_associate_rq("PACS", "CT01", "find") == pdu.build_associate_rq("PACS", "CT01", "find", offer=())


def _retrieve_response(command_field, status, counts=(0, 0, 0, 0), context_id=7, message_id=1):
    """A C-MOVE-RSP (0x8021) or C-GET-RSP (0x8010) encoded by pynetdicom, as P-DATA-TF bytes."""
    from pynetdicom import dimse_messages

    message = {0x8021: dimse_messages.C_MOVE_RSP, 0x8010: dimse_messages.C_GET_RSP}[command_field]()
    command = message.command_set
    command.CommandField = command_field
    command.MessageIDBeingRespondedTo = message_id
    command.AffectedSOPClassUID = pdu.STUDY_ROOT_MOVE if command_field == 0x8021 else pdu.STUDY_ROOT_GET
    command.CommandDataSetType = 0x0101
    command.Status = status
    (command.NumberOfRemainingSuboperations, command.NumberOfCompletedSuboperations,
     command.NumberOfFailedSuboperations, command.NumberOfWarningSuboperations) = counts
    message._set_command_group_length()
    return b"".join(P_DATA_TF(primitive).encode() for primitive in message.encode_msg(context_id, 16384))


def _read_retrieve(data):
    reader = pdu.MessageReader()
    offset = 0
    while offset + 6 <= len(data):
        length = struct.unpack(">I", data[offset + 2:offset + 6])[0]
        for context_id, value in pdu.decode_pdata(data[offset:offset + 6 + length]):
            if reader.feed(context_id, value):
                return reader.command(), reader.suboperations()
        offset += 6 + length
    return None


@pytest.mark.parametrize("field", [0x8021, 0x8010])
def test_a_retrieve_response_is_read_with_its_status_and_sub_operation_counts(field):
    command, counts = _read_retrieve(_retrieve_response(field, 0xFF00, (3, 1, 0, 2)))
    assert command[0] == field and command[2] == 0xFF00
    assert counts == {"remaining": 3, "completed": 1, "failed": 0, "warning": 2}
    command, counts = _read_retrieve(_retrieve_response(field, 0xA801))
    assert pdu.status_category(command[2]) == "failure"


@pytest.mark.parametrize("field, seed", [(0x8021, 5), (0x8010, 6)])
def test_mutated_retrieve_responses_decode_or_raise_protocol_error_only(field, seed):
    rng = random.Random(seed)
    for data in _mutations(_retrieve_response(field, 0x0000, (0, 0, 0, 0)), 3000, rng):
        try:
            read = _read_retrieve(data)
        except pdu.ProtocolError:
            continue
        if read is not None:
            dummy_command, counts = read
            assert set(counts) == {"remaining", "completed", "failed", "warning"}
            assert all(value is None or isinstance(value, int) for value in counts.values())


def test_a_whole_command_pdv_reads_as_the_message_reader_reads_it_and_each_answer_is_its_own():
    (context_id, value), = pdu.decode_pdata(_response(0x8030, 0xC000))
    reader = pdu.MessageReader()
    assert reader.feed(context_id, value)
    fresh = reader.command() + (reader.suboperations(),)
    first = pdu.whole_command(context_id, value)
    assert first == fresh == (0x8030, 1, 0xC000, False, fresh[4])
    # Decoded once: a caller that changes its answer does not change the next caller's.
    first[4]["completed"] = 99
    assert pdu.whole_command(context_id, value) == fresh


def test_a_command_that_announces_a_data_set_is_not_a_whole_command():
    from pydicom.dataset import Dataset

    identifier = Dataset()
    identifier.StudyInstanceUID = "1.2.3"
    data = _response(0x8020, 0xFF00, data_set=identifier, context_id=3)
    items, offset = [], 0
    while offset + 6 <= len(data):
        length = struct.unpack(">I", data[offset + 2:offset + 6])[0]
        items += pdu.decode_pdata(data[offset:offset + 6 + length])
        offset += 6 + length
    command = [(cid, value) for cid, value in items if value[0] & 0x01]
    assert command and pdu.whole_command(*command[0]) is None
    # A data fragment, or a command fragment that is not the last, is not one either.
    assert pdu.whole_command(3, b"\x02abc") is None and pdu.whole_command(3, b"\x01abc") is None


def test_a_malformed_whole_command_raises_protocol_error_every_time():
    (context_id, value), = pdu.decode_pdata(_response(0x8030, 0x0000))
    broken = value[:1] + b"\xff" * (len(value) - 1)
    for _attempt in range(2):
        with pytest.raises(pdu.ProtocolError):
            pdu.whole_command(context_id, broken)


def test_mutated_whole_commands_decode_or_raise_protocol_error_only():
    rng = random.Random(13)
    for data in _mutations(_response(0x8030, 0x0000), 2000, rng):
        try:
            for context_id, value in pdu.decode_pdata(data):
                pdu.whole_command(context_id, value)
        except pdu.ProtocolError:
            continue
