# -*- coding: utf-8 -*-
"""playbooks/verify.yml's modality play against real DICOM TLS servers on loopback.

The registered modality must get its C-ECHO and its C-STORE through, over TLS with its
client certificate, and the same C-STORE under an unknown AE title must be rejected with
calling-ae-not-recognized. Each check has its twin here: a server that refuses the store,
and one that lets any AE title in.
"""

from __future__ import annotations

from playbook_lab import REGISTERED_AE, client_tls, run_verify, start_tls_pacs

CALLING_AE_TASK = "Stop unless this modality has its registered AE title in dicomsec_calling_ae"
ECHO_TASK = "C-ECHO every PACS as the registered AE title, with this position's certificate and identity"
STORE_TASK = "C-STORE one synthetic instance (PatientID DICOMSEC-PROBE) to every PACS as the registered AE title"
UNKNOWN_AE_TASK = "Offer the same C-STORE under an unknown AE title and expect calling-ae-not-recognized"


def modality(pki):
    return {"dicomsec_calling_ae": REGISTERED_AE, "dicomsec_probe_tls": client_tls(pki)}


def test_modality_play_passes_where_echo_and_store_succeed_and_an_unknown_ae_is_rejected(pki, servers, tmp_path):
    server = start_tls_pacs(pki, calling_aes=[REGISTERED_AE])
    port = servers(server)
    rc, out, tasks = run_verify(tmp_path, port, "modalities", modality(pki))
    assert rc == 0, out
    echo = tasks[ECHO_TASK]["results"][0]
    assert echo["outcome"] == "accepted" and echo["tls"]["version"], out
    assert echo["operation"]["name"] == "C-ECHO" and echo["operation"]["succeeded"] is True, out
    store = tasks[STORE_TASK]["results"][0]
    assert store["operation"]["name"] == "C-STORE" and store["operation"]["succeeded"] is True, out
    # The instance really arrived, and it is the marked synthetic one.
    assert len(server.stored) == 1, out
    assert server.stored[0].PatientID == "DICOMSEC-PROBE"
    assert server.stored[0].SOPInstanceUID == store["operation"]["sop_instance_uid"]
    unknown = tasks[UNKNOWN_AE_TASK]["results"][0]
    assert unknown["outcome"] == "rejected" and unknown["reject"]["reason_name"] == "calling-ae-not-recognized", out


def test_modality_play_fails_where_the_pacs_answers_echo_but_refuses_the_store(pki, servers, tmp_path):
    # 0xA700: out of resources, a failure status; the C-ECHO alone would have passed.
    port = servers(start_tls_pacs(pki, calling_aes=[REGISTERED_AE], store_status=0xA700))
    rc, out, tasks = run_verify(tmp_path, port, "modalities", modality(pki))
    assert rc != 0, out
    assert tasks[ECHO_TASK].get("failed") is not True, out
    store = tasks[STORE_TASK]
    assert store["failed"] is True, out
    assert store["results"][0]["outcome"] == "accepted", out
    assert store["results"][0]["operation"]["result"] == "failure", out
    assert store["results"][0]["operation"]["status"] == 0xA700, out


def test_modality_play_fails_where_the_pacs_lets_an_unknown_ae_title_in(pki, servers, tmp_path):
    port = servers(start_tls_pacs(pki))
    rc, out, tasks = run_verify(tmp_path, port, "modalities", modality(pki))
    assert rc != 0, out
    assert tasks[STORE_TASK].get("failed") is not True, out
    unknown = tasks[UNKNOWN_AE_TASK]
    assert unknown["failed"] is True, out
    assert unknown["results"][0]["outcome"] == "accepted", out


def test_modality_without_its_registered_ae_title_is_stopped_before_any_association(pki, servers, tmp_path):
    port = servers(start_tls_pacs(pki, calling_aes=[REGISTERED_AE]))
    rc, out, tasks = run_verify(tmp_path, port, "modalities", {"dicomsec_probe_tls": client_tls(pki)})
    assert rc != 0, out
    check = tasks[CALLING_AE_TASK]
    assert check["failed"] is True, out
    assert check["msg"] == "dicomsec_calling_ae of lab-modality must be the AE title registered for it"
    assert ECHO_TASK not in tasks, out
