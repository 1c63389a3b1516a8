# -*- coding: utf-8 -*-
"""PDU building, bounded parsing and input validation, without a network."""

from __future__ import annotations

import pytest
from dicom_pdus import accept_pdu
from pynetdicom.pdu import A_ASSOCIATE_RQ

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_audit as da
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_pdu as pdu
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_probe as dp


@pytest.mark.parametrize("title", ["CT01", "A" * 16, "ANY-SCP", " PADDED "])
def test_valid_ae_titles_pass(title):
    assert pdu.ae_title_error(title) is None


@pytest.mark.parametrize(
    "title, words",
    [
        ("A" * 17, "at most 16"),
        ("BAD\\AE", "backslash"),
        ("BAD\nAE", "control character"),
        ("BAD\x7fAE", "control character"),
        ("", "empty"),
        ("    ", "empty"),
        ("CAFÉ", "repertoire"),
    ],
)
def test_invalid_ae_titles_are_refused_with_the_reason(title, words):
    assert words in pdu.ae_title_error(title)


@pytest.mark.parametrize("port", [0, 65536, -1, True, "104"])
def test_invalid_ports_are_refused(port):
    assert pdu.port_error(port)


def test_valid_port_passes():
    assert pdu.port_error(104) is None


@pytest.mark.parametrize(
    "identity, words",
    [
        (dict(type="username_passcode", username="u"), "passcode"),
        (dict(type="username_passcode", passcode="p"), "username"),
        (dict(type="username"), "username"),
        (dict(type="jwt"), "token"),
        (dict(type="saml"), "token"),
        (dict(type="kerberos"), "token"),
        (dict(type="password", username="u"), "not one of"),
    ],
)
def test_identity_without_its_fields_is_refused(identity, words):
    assert words in pdu.identity_error(identity)


def test_complete_identities_pass():
    assert pdu.identity_error(dict(type="username", username="u")) is None
    assert pdu.identity_error(dict(type="jwt", token="t")) is None
    assert pdu.identity_error(None) is None


def test_associate_rq_carries_titles_contexts_and_identity():
    data = pdu.build_associate_rq(
        "PACS", "CT01", "find", dict(type="username_passcode", username="ct01", passcode="pw"), positive_response=True
    )
    rq = A_ASSOCIATE_RQ()
    rq.decode(data)
    assert rq.called_ae_title == "PACS"
    assert rq.calling_ae_title == "CT01"
    assert sorted(c.context_id for c in rq.presentation_context) == [1, 3]
    uid = rq.user_information.user_identity
    assert (uid.user_identity_type, uid.primary_field, uid.secondary_field) == (2, b"ct01", b"pw")
    assert uid.positive_response_requested == 1


def test_associate_rq_without_identity_has_no_identity_item():
    rq = A_ASSOCIATE_RQ()
    rq.decode(pdu.build_associate_rq("PACS", "CT01"))
    assert rq.user_information.user_identity is None


@pytest.mark.parametrize(
    "raw, names",
    [
        (b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x03", ("rejected-permanent", "service-user", "calling-ae-not-recognized")),
        (b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x07", ("rejected-permanent", "service-user", "called-ae-not-recognized")),
        (b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x02", ("rejected-permanent", "service-user", "application-context-not-supported")),
        (b"\x03\x00\x00\x00\x00\x04\x00\x01\x02\x02", ("rejected-permanent", "service-provider-acse", "protocol-version-not-supported")),
        (b"\x03\x00\x00\x00\x00\x04\x00\x02\x03\x01", ("rejected-transient", "service-provider-presentation", "temporary-congestion")),
        (b"\x03\x00\x00\x00\x00\x04\x00\x02\x03\x02", ("rejected-transient", "service-provider-presentation", "local-limit-exceeded")),
        (b"\x03\x00\x00\x00\x00\x04\x00\x02\x02\x01", ("rejected-transient", "service-provider-acse", "no-reason-given")),
    ],
)
def test_reject_reasons_are_named_per_ps3_8_table_9_21(raw, names):
    rj = pdu.decode_reject(raw)
    assert (rj["result_name"], rj["source_name"], rj["reason_name"]) == names


def test_abort_is_named():
    ab = pdu.decode_abort(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x02")
    assert (ab["source_name"], ab["reason_name"]) == ("service-provider", "unexpected-pdu")


def test_giant_accept_length_is_refused_before_reading():
    with pytest.raises(pdu.ProtocolError, match="not read"):
        pdu.check_answer_header(0x02, 0xFFFFFFFF)


def test_reject_with_wrong_length_is_a_protocol_error():
    with pytest.raises(pdu.ProtocolError, match="length"):
        pdu.check_answer_header(0x03, 100)


def test_non_dicom_first_byte_is_a_protocol_error():
    with pytest.raises(pdu.ProtocolError, match="non-DICOM"):
        pdu.check_answer_header(ord("H"), 0x54502F31)


def test_malformed_accept_is_a_protocol_error():
    with pytest.raises(pdu.ProtocolError):
        pdu.decode_accept(b"\x02\x00\x00\x00\x00\x50" + b"\xff" * 80)


def test_pdv_with_a_lying_length_is_a_protocol_error():
    # The PDV claims 255 bytes, the PDU carries 5.
    with pytest.raises(pdu.ProtocolError):
        pdu.decode_pdata(b"\x04\x00\x00\x00\x00\x09\x00\x00\x00\xff\x01\x03abc")


def test_echo_request_is_one_last_command_fragment_on_the_verification_context():
    data = pdu.echo_request(16384)
    assert data[0] == pdu.PDU_P_DATA_TF
    (context, value), = pdu.decode_pdata(data)
    assert (context, value[0]) == (1, 0x03)


def _operation(result, succeeded):
    return {"name": "C-ECHO", "result": result, "succeeded": succeeded, "status": None}


@pytest.mark.parametrize(
    "expect, reason, outcome, reject_reason, operation, fails",
    [
        ("any", None, "refused", None, None, False),
        ("accepted", None, "accepted", None, _operation("success", True), False),
        # Accepted, but the operation did not work: not what "accepted" promises.
        ("accepted", None, "accepted", None, _operation("failure", False), True),
        ("accepted", None, "accepted", None, _operation("context_rejected", False), True),
        ("accepted", None, "accepted", None, _operation("timeout", False), True),
        ("accepted", None, "rejected", 3, None, True),
        ("denied", None, "timeout", None, None, False),
        ("denied", None, "accepted", None, _operation("failure", False), True),
        ("rejected", None, "aborted", None, None, True),
        ("rejected", "calling-ae-not-recognized", "rejected", 3, None, False),
        ("rejected", "called-ae-not-recognized", "rejected", 3, None, True),
        ("operation_refused", None, "accepted", None, _operation("failure", False), False),
        ("operation_refused", None, "accepted", None, _operation("aborted", False), False),
        ("operation_refused", None, "accepted", None, _operation("context_rejected", False), False),
        # A close or a silence is not the server saying no.
        ("operation_refused", None, "accepted", None, _operation("closed", False), True),
        ("operation_refused", None, "accepted", None, _operation("timeout", False), True),
        ("operation_refused", None, "accepted", None, _operation("success", True), True),
        ("operation_refused", None, "rejected", 3, None, True),
    ],
)
def test_expectation_matrix(expect, reason, outcome, reject_reason, operation, fails):
    result = {
        "outcome": outcome,
        "dimse": "echo",
        "operation": operation,
        "reject": pdu.reject_names(1, 1, reject_reason) if reject_reason else None,
    }
    assert bool(dp.expectation_error(result, expect, reason)) is fails


def test_accepted_with_dimse_none_needs_only_the_association():
    result = {"outcome": "accepted", "dimse": "none", "operation": None, "reject": None}
    assert dp.expectation_error(result, "accepted") is None
    assert "needs an operation" in dp.expectation_error(result, "operation_refused")


def test_missing_certificate_file_is_refused(tmp_path):
    err = dp.tls_options_error(dict(enabled=True, cert_file=str(tmp_path / "nope.pem")))
    assert "tls.cert_file" in err and "does not exist" in err


def test_tls_min_above_max_is_refused():
    assert "above" in dp.tls_options_error(dict(enabled=True, min_version="TLSv1.3", max_version="TLSv1.2"))


def test_validate_request_collects_every_error():
    errors = dp.validate_request(dict(host="127.0.0.1", port=0, called_ae="X" * 20, calling_ae="A\\B", timeout=0))
    assert len(errors) == 4


def test_audit_validation_names_the_bad_endpoint():
    errors = da.validate(dict(endpoints=[dict(host="h", port=104, called_ae="OK"), dict(host="h", port=99999, called_ae="OK")],
                              concurrency=4, timeout=1))
    assert errors == ["endpoints[1].port 99999 is out of range 1-65535"]


def test_audit_validation_refuses_unknown_checks():
    errors = da.validate(dict(endpoints=[dict(host="h", port=104, called_ae="OK")], checks=["nope"], concurrency=1, timeout=1))
    assert "unknown checks: nope" in errors[0]


def _accept(identity_response=None, contexts=((1, 0), (3, 3)), max_length=16384):
    return accept_pdu("PACS", "CT01", contexts, max_length, identity_response)


@pytest.mark.parametrize("identity_response", [None, b"", b"session-token"])
def test_accept_decoder_reads_contexts_length_and_identity_response(identity_response):
    data = _accept(identity_response)
    decoded = pdu.decode_accept(data)
    assert decoded["contexts"] == {1: 0, 3: 3}
    assert decoded["max_pdu"] == 16384
    assert decoded["identity_response"]["present"] is (identity_response is not None)
    if identity_response:
        assert decoded["identity_response"]["length"] == len(identity_response)


@pytest.mark.parametrize("cut", [80, 100, -3])
def test_truncated_accept_is_a_protocol_error(cut):
    data = bytearray(_accept(b"abc"))
    data = bytes(data[:cut])
    with pytest.raises(pdu.ProtocolError):
        pdu.decode_accept(data)


def test_accept_without_user_information_is_a_protocol_error():
    data = bytearray(_accept(None))
    index = data.index(b"\x50\x00")
    data = data[:index]
    data[2:6] = (len(data) - 6).to_bytes(4, "big")
    with pytest.raises(pdu.ProtocolError, match="no user information"):
        pdu.decode_accept(bytes(data))


def test_accept_announcing_a_tiny_maximum_pdu_is_a_protocol_error():
    with pytest.raises(pdu.ProtocolError, match="maximum PDU length of 8"):
        pdu.decode_accept(accept_pdu(contexts=((1, 0),), max_length=8))


def test_bind_address_that_is_not_local_is_refused_before_traffic():
    # 2001:db8::/32 is reserved for documentation and never assigned; binding to it fails
    # locally, without a packet being sent.
    assert "not usable" in dp.bind_address_error("2001:db8::dead:beef")


def test_bind_address_must_be_numeric():
    assert "must be an IP address" in dp.bind_address_error("localhost")


def test_loopback_bind_address_is_accepted():
    assert dp.bind_address_error("127.0.0.1") is None


def test_identity_ignored_request_is_the_same_with_or_without_echo():
    # dicom_audit reads identity_ignored from an association that also asks the C-ECHO:
    # sound only because dimse none and echo propose the very same request.
    identity = dict(type="username_passcode", username="ct01", passcode="secret")
    assert pdu.build_associate_rq("ANY-SCP", "CT01", "none", identity, True) == pdu.build_associate_rq(
        "ANY-SCP", "CT01", "echo", identity, True
    )
