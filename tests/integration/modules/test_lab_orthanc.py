# -*- coding: utf-8 -*-
"""The hardened test Orthanc is configured by the pacs_identity role itself.

Its files are rendered from the role's templates with the role's defaults and vars, so
what the module tests prove against it holds for what the role writes. The clients here
are pynetdicom's (for rejects, its encoder on a plain socket), independent of the
collection's engine.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind, Verification

from dicom_lab import LOOPBACK, ORTHANC_OPTIONS, store_test_study
from lab_servers import PACS_IDENTITY, Orthanc

TEMPLATE = PACS_IDENTITY / "templates" / "orthanc.json.j2"


def _associate(port, calling_ae, called_ae="ORTHANC", bind=LOOPBACK):
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae.associate(LOOPBACK, port, ae_title=called_ae, bind_address=(bind, 0))


def _answer(port, calling_ae, called_ae="ORTHANC", bind=LOOPBACK):
    """The PDU type and the first four bytes of the body of the answer to an
    A-ASSOCIATE-RQ encoded by pynetdicom. Read from the socket: pynetdicom's own client
    now and then reports Orthanc's A-ASSOCIATE-RJ as an abort (5 in 200 here), and a
    reject test must not depend on that."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context
    from pynetdicom.transport import AddressInformation

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    primitive.calling_presentation_address = AddressInformation(bind, 0)
    primitive.called_presentation_address = AddressInformation(LOOPBACK, port)
    context = build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    with socket.create_connection((LOOPBACK, port), timeout=5, source_address=(bind, 0)) as sock:
        sock.sendall(request.encode())
        answer = b""
        while len(answer) < 10:
            chunk = sock.recv(10 - len(answer))
            if not chunk:
                break
            answer += chunk
        if answer[:1] == b"\x02":
            # Accepted after all: end it properly rather than leave Orthanc waiting.
            sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
    return answer[0] if answer else None, tuple(answer[7:10])


def _find_statuses(assoc):
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    statuses = [status.get("Status") for status, dummy in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
    if assoc.is_established:
        assoc.release()
    return statuses


def test_hardened_orthanc_config_sets_every_literal_option_of_the_roles_template(orthanc_hardened_server):
    literals = {
        key: value == "true"
        for key, value in re.findall(r'(?m)^\s*"(\w+)": (true|false)\b', TEMPLATE.read_text(encoding="utf-8"))
    }
    # The options a hand-made copy had lost: modalities only from the file, no Lua over REST.
    assert literals["DicomModalitiesInDatabase"] is False
    assert literals["ExecuteLuaEnabled"] is False
    assert len(literals) >= 12
    config = orthanc_hardened_server.config
    assert {key: config.get(key) for key in literals} == literals


def test_hardened_orthanc_config_is_rendered_from_the_roles_variables(orthanc_hardened_server):
    config = orthanc_hardened_server.config
    assert config["DicomPort"] == orthanc_hardened_server.dicom_port
    assert config["DicomAet"] == "ORTHANC"
    assert config["DicomTlsEnabled"] is False
    assert config["DicomScpTimeout"] == ORTHANC_OPTIONS["DicomScpTimeout"]
    # The role's modality entries: one permission per service, from `allow`, C-ECHO only
    # when `allow` is not given.
    mr02 = config["DicomModalities"]["mr02"]
    assert (mr02["AET"], mr02["Host"], mr02["AllowEcho"], mr02["AllowFind"], mr02["AllowStore"]) == (
        "MR02", LOOPBACK, True, False, False)
    # The REST users come from the role's credentials.json, readable by its owner only.
    assert list(config["RegisteredUsers"]) == ["lab"]
    assert (orthanc_hardened_server.config_dir / "credentials.json").stat().st_mode & 0o077 == 0


def test_hardened_orthanc_runs_with_the_environment_of_the_roles_drop_in(orthanc_hardened_server):
    assert orthanc_hardened_server.environment == {"TCP_NODELAY": "1"}
    environ = Path("/proc/%d/environ" % orthanc_hardened_server.proc.pid).read_bytes().split(b"\0")
    assert b"TCP_NODELAY=1" in environ


def test_hardened_orthanc_accepts_the_registered_calling_ae(orthanc_hardened):
    assoc = _associate(orthanc_hardened, "CT01")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_hardened_orthanc_answers_the_registered_calling_ae_with_an_accept(orthanc_hardened):
    # The raw client's twin of the rejects below: the same request from CT01 is accepted.
    assert _answer(orthanc_hardened, "CT01")[0] == 0x02


def test_hardened_orthanc_rejects_an_unknown_calling_ae_with_1_1_3(orthanc_hardened):
    assert _answer(orthanc_hardened, "INTRUDER") == (0x03, (0x01, 0x01, 0x03))


def test_hardened_orthanc_rejects_a_wrong_called_ae_with_1_1_7(orthanc_hardened):
    assert _answer(orthanc_hardened, "CT01", called_ae="ANY-SCP") == (0x03, (0x01, 0x01, 0x07))


def test_hardened_orthanc_rejects_the_registered_ae_from_another_address_with_1_1_3(orthanc_hardened):
    # 127.0.0.2 is loopback too, but not the address CT01 is registered with.
    assert _answer(orthanc_hardened, "CT01", bind="127.0.0.2") == (0x03, (0x01, 0x01, 0x03))


def test_packaged_orthanc_answers_an_unknown_calling_ae_with_an_accept(orthanc_open):
    assert _answer(orthanc_open, "INTRUDER")[0] == 0x02


def test_hardened_orthanc_answers_find_from_a_modality_allowed_to_find(orthanc_hardened):
    assoc = _associate(orthanc_hardened, "CT01")
    assert assoc.is_established
    assert _find_statuses(assoc)[-1] == 0x0000


def test_hardened_orthanc_refuses_find_from_a_modality_allowed_only_to_echo(orthanc_hardened):
    # Per-service permissions are not association rejects: MR02's association is
    # accepted, then its C-FIND gets no success.
    assoc = _associate(orthanc_hardened, "MR02")
    assert assoc.is_established
    assert 0x0000 not in _find_statuses(assoc)


def test_hardened_orthanc_stores_from_a_modality_allowed_to_store(orthanc_hardened):
    store_test_study(orthanc_hardened, calling_ae="CT01")


def test_hardened_orthanc_refuses_store_from_a_modality_allowed_only_to_echo(orthanc_hardened):
    assoc = _associate(orthanc_hardened, "MR02")
    assert assoc.is_established
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "SYNTH-0002"
    ds.Modality = "CT"
    status = assoc.send_c_store(ds)
    if assoc.is_established:
        assoc.release()
    assert status.get("Status") not in (0x0000, 0xB000, 0xB006, 0xB007)


@pytest.mark.parametrize(
    "settings, named",
    [
        (dict(extra_options={"DicomAlwaysAllowStore": True}), "DicomAlwaysAllowStore"),
        (dict(modalities=[{"name": "bad", "aet": "BACK\\SLASH", "host": LOOPBACK}]), "BACK"),
        (dict(modalities=[{"name": "ct01", "aet": "CT01", "host": LOOPBACK, "allow": ["delete"]}]), "delete"),
    ],
    ids=["enforced-option", "bad-ae-title", "unknown-service"],
)
def test_lab_orthanc_refuses_what_the_role_refuses_and_starts_nothing(tmp_path, settings, named):
    orthanc = Orthanc(tmp_path, **settings)
    # The role's own message, which names what it refused.
    with pytest.raises(RuntimeError, match="(?s)^pacs_identity did not render .*" + re.escape(named)):
        orthanc.start()
    assert orthanc.proc is None
    assert not (tmp_path / "config" / "orthanc.json").exists()
