# -*- coding: utf-8 -*-
"""The association engine against real servers on loopback: pynetdicom SCPs with each
policy, DCMTK storescp, Orthanc (open and hardened) and a hostile TCP server."""

from __future__ import annotations

import time

import pytest

from dicom_lab import JWT_OK, LOOPBACK, STUDY_UIDS, USERS, ScpPolicy, free_port

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_probe as dp


def probe(port, host=LOOPBACK, **kwargs):
    req = dict(host=host, port=port, called_ae="ANY-SCP", calling_ae="DICOMSEC-PROBE", timeout=3, dimse="echo")
    req.update(kwargs)
    assert dp.validate_request(req) == []
    return dp.probe(req)


# --- open SCP ---------------------------------------------------------------------------


def test_open_scp_accepts_and_echo_succeeds(scp_factory):
    result = probe(scp_factory(ScpPolicy.OPEN))
    assert result["outcome"] == "accepted"
    assert result["operation"]["status"] == 0
    assert result["operation"]["succeeded"] is True
    assert result["released"] is True
    assert result["latency_ms"] > 0


def test_open_scp_find_reports_only_the_number_of_matches(scp_factory):
    result = probe(scp_factory(ScpPolicy.OPEN), dimse="find")
    assert result["outcome"] == "accepted"
    assert result["operation"]["matches"] == len(STUDY_UIDS)
    assert result["operation"]["status"] == 0
    assert result["operation"]["succeeded"] is True
    # No identifier content may leak into the result.
    assert not any(uid in repr(result) for uid in STUDY_UIDS)


def test_dimse_none_releases_without_a_service_request(scp_factory):
    result = probe(scp_factory(ScpPolicy.OPEN), dimse="none")
    assert result["outcome"] == "accepted"
    assert result["operation"] is None
    assert result["released"] is True


def test_open_scp_on_ipv6_loopback_accepts(scp_factory):
    try:
        port = scp_factory(ScpPolicy.OPEN, host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    assert probe(port, host="::1")["outcome"] == "accepted"


def test_host_name_uses_the_transport_path_and_is_accepted(scp_factory):
    # Numeric addresses connect at once; names are looked up on a thread first.
    result = probe(scp_factory(ScpPolicy.OPEN), host="localhost")
    assert result["outcome"] == "accepted"
    assert result["operation"]["status"] == 0
    assert result["operation"]["succeeded"] is True


def test_bind_address_is_used_as_source(scp_factory):
    result = probe(scp_factory(ScpPolicy.OPEN), bind_address="127.0.0.1")
    assert result["outcome"] == "accepted"


# --- calling AE whitelist -----------------------------------------------------------------


def test_whitelisted_calling_ae_is_accepted(scp_factory):
    assert probe(scp_factory(ScpPolicy.CALLING_WHITELIST), calling_ae="CT01")["outcome"] == "accepted"


def test_unknown_calling_ae_is_rejected_with_reason_3(scp_factory):
    result = probe(scp_factory(ScpPolicy.CALLING_WHITELIST), calling_ae="INTRUDER")
    assert result["outcome"] == "rejected"
    assert (result["reject"]["result"], result["reject"]["source"], result["reject"]["reason"]) == (1, 1, 3)
    assert result["reject"]["reason_name"] == "calling-ae-not-recognized"
    assert result["reject"]["result_name"] == "rejected-permanent"


# --- called AE check ----------------------------------------------------------------------


def test_right_called_ae_is_accepted(scp_factory):
    assert probe(scp_factory(ScpPolicy.CALLED_CHECK, ae_title="PACS01"), called_ae="PACS01")["outcome"] == "accepted"


def test_wrong_called_ae_is_rejected_with_reason_7(scp_factory):
    result = probe(scp_factory(ScpPolicy.CALLED_CHECK, ae_title="PACS01"), called_ae="ANY-SCP")
    assert result["outcome"] == "rejected"
    assert result["reject"]["reason"] == 7
    assert result["reject"]["reason_name"] == "called-ae-not-recognized"


# --- user identity ------------------------------------------------------------------------


def test_correct_passcode_is_accepted(scp_factory):
    identity = dict(type="username_passcode", username="ct01", passcode=USERS["ct01"])
    assert probe(scp_factory(ScpPolicy.IDENTITY), identity=identity)["outcome"] == "accepted"


def test_wrong_passcode_is_rejected(scp_factory):
    identity = dict(type="username_passcode", username="ct01", passcode="wrong")
    result = probe(scp_factory(ScpPolicy.IDENTITY), identity=identity)
    assert result["outcome"] == "rejected"
    assert result["reject"]["source"] == 2


def test_request_without_identity_is_rejected_by_identity_policy(scp_factory):
    result = probe(scp_factory(ScpPolicy.IDENTITY))
    assert result["outcome"] == "rejected"
    assert result["reject"]["reason_name"] == "no-reason-given"


def test_request_without_identity_is_accepted_by_open_scp(scp_factory):
    assert probe(scp_factory(ScpPolicy.OPEN))["outcome"] == "accepted"


def test_positive_identity_response_is_reported(scp_factory):
    identity = dict(type="jwt", token=JWT_OK, positive_response_requested=True)
    result = probe(scp_factory(ScpPolicy.IDENTITY), identity=identity)
    assert result["outcome"] == "accepted"
    assert result["identity_response"]["present"] is True
    assert result["identity_response"]["length"] == len(b"session-ok")


def test_ignored_identity_has_no_identity_response(scp_factory):
    identity = dict(type="jwt", token="anything", positive_response_requested=True)
    result = probe(scp_factory(ScpPolicy.OPEN), identity=identity)
    assert result["outcome"] == "accepted"
    assert result["identity_response"]["present"] is False


# --- TLS ----------------------------------------------------------------------------------


def test_tls_with_client_certificate_is_accepted(tls_scp_factory, pki):
    result = probe(tls_scp_factory(), tls=pki.client_tls())
    assert result["outcome"] == "accepted"
    assert result["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert result["tls"]["peer_subject"] == "CN=localhost"
    assert result["operation"]["status"] == 0
    assert result["operation"]["succeeded"] is True


def test_tls_without_client_certificate_fails(tls_scp_factory, pki):
    result = probe(tls_scp_factory(), tls=pki.client_tls(cert_file=None, key_file=None))
    assert result["outcome"] == "tls_failed"


def test_a_server_that_asks_for_a_client_certificate_is_recorded_as_asking(tls_scp_factory, pki):
    result = probe(tls_scp_factory(), tls=pki.client_tls())
    assert result["outcome"] == "accepted" and result["tls"]["certificate_requested"] is True, result


def test_a_server_that_asks_for_no_client_certificate_is_not_recorded_as_asking(tls_scp_factory, pki):
    result = probe(tls_scp_factory(require_client_cert=False), tls=pki.client_tls(cert_file=None, key_file=None))
    assert result["outcome"] == "accepted" and result["tls"]["certificate_requested"] is False, result


def test_tls_with_untrusted_client_certificate_fails(tls_scp_factory, pki):
    tls = pki.client_tls(cert_file=pki.path("intruder.pem"), key_file=pki.path("intruder.key"))
    assert probe(tls_scp_factory(), tls=tls)["outcome"] == "tls_failed"


def test_tls_server_with_unknown_ca_fails_verification(tls_scp_factory, pki):
    result = probe(tls_scp_factory(), tls=pki.client_tls(ca_file=pki.path("other-ca.pem")))
    assert result["outcome"] == "tls_failed"
    assert "CERTIFICATE_VERIFY_FAILED" in result["detail"]


def test_plaintext_to_tls_port_is_not_accepted(tls_scp_factory):
    assert probe(tls_scp_factory())["outcome"] in ("aborted", "timeout")


def test_tls_1_1_is_refused_by_modern_server(tls_scp_factory, pki):
    tls = pki.client_tls(min_version="TLSv1.1", max_version="TLSv1.1")
    assert probe(tls_scp_factory(), tls=tls)["outcome"] == "tls_failed"


def test_tls_1_1_is_accepted_by_legacy_server(tls_scp_factory, pki):
    tls = pki.client_tls(min_version="TLSv1.1", max_version="TLSv1.1")
    result = probe(tls_scp_factory(legacy=True), tls=tls)
    assert result["outcome"] == "accepted"
    assert result["tls"]["version"] == "TLSv1.1"


# --- no server, hostile servers -------------------------------------------------------------


def test_closed_port_is_refused():
    assert probe(free_port())["outcome"] == "refused"


def test_silent_server_times_out_within_the_timeout(hostile):
    start = time.monotonic()
    result = probe(hostile.ports["silence"], timeout=0.5)
    assert result["outcome"] == "timeout"
    assert time.monotonic() - start < 1.5


def test_garbage_answer_is_an_abort_with_protocol_error(hostile):
    result = probe(hostile.ports["garbage"])
    assert result["outcome"] == "aborted"
    assert "non-DICOM" in result["detail"]


def test_endless_pdu_times_out_instead_of_hanging(hostile):
    start = time.monotonic()
    result = probe(hostile.ports["endless"], timeout=1)
    assert result["outcome"] == "timeout"
    assert time.monotonic() - start < 2.5


def test_giant_pdu_length_is_refused_without_reading_it(hostile):
    start = time.monotonic()
    result = probe(hostile.ports["giant"], timeout=5)
    assert result["outcome"] == "aborted"
    assert "not read" in result["detail"]
    assert time.monotonic() - start < 1


def test_reset_is_an_abort(hostile):
    result = probe(hostile.ports["reset"])
    assert result["outcome"] == "aborted"
    assert "reset" in result["detail"]


def test_close_without_answer_is_an_abort(hostile):
    result = probe(hostile.ports["close"])
    assert result["outcome"] == "aborted"
    assert "closed" in result["detail"]


def test_reject_followed_by_reset_is_still_a_reject(hostile):
    for dummy in range(20):
        result = probe(hostile.ports["reject_then_reset"])
        assert result["outcome"] == "rejected"
        assert result["reject"]["reason"] == 3


def test_reject_followed_by_reset_is_still_a_reject_on_the_transport_path(hostile):
    for dummy in range(20):
        result = probe(hostile.ports["reject_then_reset"], host="localhost")
        assert result["outcome"] == "rejected"


def test_a_abort_answer_is_reported_with_source_and_reason(hostile):
    result = probe(hostile.ports["abort"])
    assert result["outcome"] == "aborted"
    assert result["abort"]["source_name"] == "service-provider"


def test_garbage_after_accept_keeps_outcome_accepted_without_status(hostile):
    result = probe(hostile.ports["ac_then_garbage"])
    assert result["outcome"] == "accepted"
    assert result["operation"]["result"] == "protocol_error"
    assert result["operation"]["status"] is None
    assert result["operation"]["succeeded"] is False
    assert dp.expectation_error(result, "accepted")


def test_truncated_accept_is_an_abort(hostile):
    result = probe(hostile.ports["truncated_ac"])
    assert result["outcome"] == "aborted"


def test_rejects_are_never_misreported_under_concurrency(scp_factory, hostile):
    whitelist = scp_factory(ScpPolicy.CALLING_WHITELIST)
    requests = []
    for index in range(300):
        port = whitelist if index % 2 else hostile.ports["reject_then_reset"]
        requests.append(dict(host=LOOPBACK, port=port, called_ae="ANY-SCP", calling_ae="INTRUDER", timeout=10, dimse="none"))
    results = dp.probe_many(requests, concurrency=64)
    assert [r["outcome"] for r in results] == ["rejected"] * len(requests)


# --- DCMTK storescp -------------------------------------------------------------------------


def test_storescp_accepts_echo_from_any_calling_ae(storescp):
    result = probe(storescp, called_ae="STORESCP", calling_ae="RANDOM-1234")
    assert result["outcome"] == "accepted"
    assert result["operation"]["status"] == 0
    assert result["operation"]["succeeded"] is True


def test_storescp_has_no_find_service(storescp):
    result = probe(storescp, called_ae="STORESCP", dimse="find")
    assert result["outcome"] == "accepted"
    assert result["operation"]["result"] == "context_rejected"
    assert "did not accept the C-FIND presentation context" in result["operation"]["detail"]
    assert dp.expectation_error(result, "operation_refused") is None


# --- Orthanc ----------------------------------------------------------------------------


def test_default_orthanc_accepts_any_calling_ae(orthanc_open):
    result = probe(orthanc_open, called_ae="ORTHANC", calling_ae="RANDOM-1234")
    assert result["outcome"] == "accepted"
    assert result["operation"]["status"] == 0
    assert result["operation"]["succeeded"] is True


def test_default_orthanc_answers_find_from_a_registered_modality_with_a_count(orthanc_open):
    result = probe(orthanc_open, called_ae="ORTHANC", calling_ae="CT01", dimse="find")
    assert result["outcome"] == "accepted"
    assert result["operation"]["status"] == 0
    assert result["operation"]["succeeded"] is True
    assert result["operation"]["matches"] == 1


def test_default_orthanc_aborts_find_from_an_unknown_calling_ae(orthanc_open):
    # Orthanc 1.10 lets any AE echo and store, but not query: the association is
    # accepted and the C-FIND is aborted, which is not an association reject.
    result = probe(orthanc_open, called_ae="ORTHANC", calling_ae="RANDOM-1234", dimse="find")
    assert result["outcome"] == "accepted"
    assert result["operation"]["status"] is None
    assert result["operation"]["matches"] == 0
    assert result["operation"]["result"] in dp.REFUSED_OPERATION_RESULTS
    assert dp.expectation_error(result, "accepted")
    assert dp.expectation_error(result, "operation_refused") is None


def test_hardened_orthanc_accepts_registered_modality(orthanc_hardened):
    assert probe(orthanc_hardened, called_ae="ORTHANC", calling_ae="CT01")["outcome"] == "accepted"


def test_hardened_orthanc_rejects_unknown_calling_ae_with_reason_3(orthanc_hardened):
    result = probe(orthanc_hardened, called_ae="ORTHANC", calling_ae="INTRUDER")
    assert result["outcome"] == "rejected"
    assert result["reject"]["reason_name"] == "calling-ae-not-recognized"


def test_hardened_orthanc_rejects_wrong_called_ae_with_reason_7(orthanc_hardened):
    result = probe(orthanc_hardened, called_ae="ANY-SCP", calling_ae="CT01")
    assert result["outcome"] == "rejected"
    assert result["reject"]["reason_name"] == "called-ae-not-recognized"


def test_orthanc_ignores_identity_with_positive_response_requested(orthanc_hardened):
    identity = dict(type="username_passcode", username="ct01", passcode="x", positive_response_requested=True)
    result = probe(orthanc_hardened, called_ae="ORTHANC", calling_ae="CT01", identity=identity)
    assert result["outcome"] == "accepted"
    assert result["identity_response"]["present"] is False


# --- the operation after an accepted association -----------------------------------------
# Each case has the association accepted; what differs is the answer to the request, and
# only a success may let `expect: accepted` pass.


def test_echo_answered_with_a_failure_status_is_accepted_but_not_succeeded(hostile):
    result = probe(hostile.ports["echo_failure"])
    assert result["outcome"] == "accepted"
    assert result["operation"] == dict(result["operation"], name="C-ECHO", result="failure", succeeded=False, status=0xC000)
    assert "status 0xc000" in dp.expectation_error(result, "accepted") or "failure" in dp.expectation_error(result, "accepted")
    assert dp.expectation_error(result, "operation_refused") is None
    assert result["released"] is True


def test_verification_context_refused_is_accepted_but_not_succeeded(hostile):
    result = probe(hostile.ports["contexts_refused"])
    assert result["outcome"] == "accepted"
    assert result["operation"]["result"] == "context_rejected"
    assert "did not accept the C-ECHO presentation context (result 3)" in result["operation"]["detail"]
    assert dp.expectation_error(result, "accepted")
    assert dp.expectation_error(result, "operation_refused") is None


def test_the_same_association_without_an_operation_is_accepted(hostile):
    # The twin of the two above: dimse none asks nothing, so the association is the proof.
    result = probe(hostile.ports["contexts_refused"], dimse="none")
    assert result["outcome"] == "accepted"
    assert result["operation"] is None
    assert dp.expectation_error(result, "accepted") is None


def test_abort_instead_of_a_response_is_a_refused_operation(hostile):
    result = probe(hostile.ports["abort_on_request"])
    assert result["outcome"] == "accepted"
    assert result["operation"]["result"] == "aborted"
    assert result["abort"]["source_name"] == "service-provider"
    assert dp.expectation_error(result, "operation_refused") is None
    assert dp.expectation_error(result, "accepted")


@pytest.mark.parametrize("mode, words", [("close_on_request", "closed"), ("reset_on_request", "reset")])
def test_close_or_reset_instead_of_a_response_is_not_a_stated_refusal(hostile, mode, words):
    result = probe(hostile.ports[mode])
    assert result["outcome"] == "accepted"
    assert result["operation"]["result"] == "closed"
    assert words in result["operation"]["detail"]
    assert dp.expectation_error(result, "accepted")
    assert dp.expectation_error(result, "operation_refused")


def test_silence_after_accept_is_an_operation_timeout_within_the_deadline(hostile):
    start = time.monotonic()
    result = probe(hostile.ports["silent_after_accept"], timeout=1)
    assert time.monotonic() - start < 2.5
    assert result["outcome"] == "accepted"
    assert result["operation"]["result"] == "timeout"
    assert dp.expectation_error(result, "accepted")
    assert dp.expectation_error(result, "operation_refused")


def test_a_trickled_response_costs_at_most_the_timeout(hostile):
    start = time.monotonic()
    result = probe(hostile.ports["trickle_response"], timeout=1.5)
    assert time.monotonic() - start < 3
    assert result["operation"]["result"] == "timeout"


def test_the_wrong_response_type_is_a_protocol_error(hostile):
    result = probe(hostile.ports["wrong_response"])
    assert result["outcome"] == "accepted"
    assert result["operation"]["result"] == "protocol_error"
    assert "command field 0x8020" in result["operation"]["detail"]
    assert dp.expectation_error(result, "accepted")


def test_a_giant_p_data_length_is_refused_without_reading_it(hostile):
    start = time.monotonic()
    result = probe(hostile.ports["giant_pdata"], timeout=5)
    assert time.monotonic() - start < 1.5
    assert result["operation"]["result"] == "protocol_error"
    assert "not read" in result["operation"]["detail"]


def test_endless_find_matches_are_counted_to_the_cap_then_cancelled(hostile):
    result = probe(hostile.ports["endless_pending"], dimse="find", timeout=20)
    assert result["outcome"] == "accepted"
    assert result["operation"]["matches"] == dp.MAX_FIND_MATCHES
    assert result["operation"]["result"] == "success"
    assert "cancelled" in result["operation"]["detail"]
    assert result["released"] is True


def test_a_store_with_a_coercion_warning_was_stored(hostile):
    result = probe(hostile.ports["store_warning"], dimse="store")
    assert result["operation"]["result"] == "warning"
    assert result["operation"]["status"] == 0xB000
    assert result["operation"]["succeeded"] is True
    assert dp.expectation_error(result, "accepted") is None


def test_store_writes_the_probe_instance_to_a_storage_scp(scp_factory):
    port = scp_factory(ScpPolicy.OPEN)
    result = probe(port, dimse="store")
    assert result["outcome"] == "accepted"
    assert result["operation"]["result"] == "success"
    assert result["operation"]["succeeded"] is True
    assert result["operation"]["sop_instance_uid"].startswith("2.25.")
    assert dp.expectation_error(result, "accepted") is None


def test_store_refused_with_a_failure_status_is_not_succeeded(scp_factory):
    result = probe(scp_factory(ScpPolicy.STORE_REFUSED), dimse="store")
    assert result["outcome"] == "accepted"
    assert result["operation"]["result"] == "failure"
    assert result["operation"]["status"] == 0xA700
    assert dp.expectation_error(result, "accepted")
    assert dp.expectation_error(result, "operation_refused") is None


def test_store_in_check_mode_negotiates_but_does_not_send(scp_factory):
    result = probe(scp_factory(ScpPolicy.OPEN), dimse="store", store_not_sent=True)
    assert result["operation"]["result"] == "not_sent"
    assert result["operation"]["sop_instance_uid"] is None
    assert dp.expectation_error(result, "accepted") is None


def test_storescp_stores_the_probe_instance_on_disk(storescp_with_dir):
    port, directory = storescp_with_dir
    result = probe(port, called_ae="STORESCP", dimse="store")
    assert result["operation"]["succeeded"] is True
    import pydicom

    stored = [pydicom.dcmread(path) for path in directory.iterdir()]
    assert [str(ds.SOPInstanceUID) for ds in stored] == [result["operation"]["sop_instance_uid"]]
    assert str(stored[0].PatientName) == "DICOMSEC^PROBE"
