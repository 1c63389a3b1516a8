# -*- coding: utf-8 -*-
"""The gate in front of a real Orthanc, the PACS the role is written for.

Orthanc (configured by pacs_identity, as in production) accepts the identity sub-item and
ignores it: it never answers a request for a positive response. The gateway checks the
identity, removes it from the request and adds the server response to Orthanc's
A-ASSOCIATE-AC, so a client that insists on one (DCMTK's ``storescu -rsp``) stores through
the gateway and fails against Orthanc alone. An instance that got through is looked up in
Orthanc's storage by its SOP Instance UID; a refused one never reaches it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from gate_lab import CALLED_AE, PASSCODES, Nginx, free_port, make_root, render_gateway, skip_without_nginx
from lab_servers import LOOPBACK, Orthanc, Unavailable

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_probe

STORESCU = "/usr/bin/storescu"
USER = "ct01tech"


class OrthancGateway:
    def __init__(self, root, port, orthanc):
        self.root = root
        self.port = port
        self.orthanc = orthanc

    def stored(self, sop_instance_uid):
        """Whether a file in Orthanc's storage holds this SOP Instance UID."""
        needle = sop_instance_uid.encode("ascii")
        for path in (self.orthanc.root / "storage").rglob("*"):
            if path.is_file() and not path.name.startswith("index") and needle in path.read_bytes():
                return True
        return False


@pytest.fixture(scope="module")
def orthanc_gateway():
    skip_without_nginx()
    root = make_root()
    orthanc = nginx = None
    try:
        # The gateway reaches Orthanc from loopback, where Orthanc expects the modality.
        orthanc = Orthanc(root / "orthanc", aet=CALLED_AE,
                          modalities=[{"name": "ct01", "aet": "CT01", "host": LOOPBACK, "allow": ["echo", "store"]}])
        try:
            orthanc.start()
        except Unavailable as exc:
            pytest.skip(str(exc))
        port = free_port()
        render_gateway(root, {
            "nginx_stream_proxy_listeners": [{
                "name": "orthanc", "port": port, "addresses": [LOOPBACK], "called_aes": [CALLED_AE],
                "upstream": {"host": LOOPBACK, "port": orthanc.dicom_port},
                "timeouts": {"preread": 3, "connect": 3, "idle": 30}}],
            "nginx_stream_proxy_modalities": [{"ae": "CT01", "sources": ["127.0.0.1/32"]}],
            "nginx_stream_proxy_users": [{"name": USER, "passcode": PASSCODES[USER], "calling_aes": ["CT01"]}],
            "nginx_stream_proxy_pbkdf2_iterations": 20000,
            "nginx_stream_proxy_gate_dir": str(root / "gate"),
            "nginx_stream_proxy_run_dir": str(root / "run"),
            "nginx_stream_proxy_log_file": str(root / "decisions.log"),
            "nginx_stream_proxy_syslog": {},
        })
        (root / "run").chmod(0o755)
        nginx = Nginx(root).start([port])
        yield OrthancGateway(root, port, orthanc)
    finally:
        if nginx is not None:
            nginx.stop()
        if orthanc is not None:
            orthanc.stop()
        shutil.rmtree(root, ignore_errors=True)


def _store(port, identity):
    return dicom_probe.probe({"host": LOOPBACK, "port": port, "called_ae": CALLED_AE, "calling_ae": "CT01",
                              "timeout": 10, "identity": identity, "dimse": "store"})


def _passcode(secret):
    return {"type": "username_passcode", "username": USER, "passcode": secret, "positive_response_requested": True}


def test_an_identified_user_stores_into_orthanc_through_the_gate_and_gets_a_positive_response(orthanc_gateway):
    result = _store(orthanc_gateway.port, _passcode(PASSCODES[USER]))
    assert result["outcome"] == "accepted", result
    assert result["operation"]["succeeded"], result
    assert result["identity_response"]["present"] is True, result
    assert orthanc_gateway.stored(result["operation"]["sop_instance_uid"])


def test_a_wrong_passcode_is_rejected_before_orthanc_sees_the_instance(orthanc_gateway):
    result = _store(orthanc_gateway.port, _passcode("Not-The-Passcode-4u2"))
    assert result["outcome"] == "rejected", result
    assert (result["reject"]["result"], result["reject"]["source"], result["reject"]["reason"]) == (1, 2, 1)
    assert result["operation"] is None


def test_orthanc_alone_accepts_the_same_identity_and_never_answers_it(orthanc_gateway):
    # The twin of the first test: what the gateway adds is missing without it.
    result = _store(orthanc_gateway.orthanc.dicom_port, _passcode(PASSCODES[USER]))
    assert result["outcome"] == "accepted", result
    assert result["identity_response"]["present"] is False, result


def _storescu(port, dicom_file):
    if not Path(STORESCU).exists():
        pytest.skip("DCMTK storescu is not installed")
    cmd = [STORESCU, "-aet", "CT01", "-aec", CALLED_AE, "-to", "10", "-ta", "10",
           "-usr", USER, "-pwd", PASSCODES[USER], "-rsp", LOOPBACK, str(port), str(dicom_file)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_dcmtk_storescu_asking_for_a_positive_response_stores_into_orthanc_through_the_gate(orthanc_gateway, dicom_file):
    from pydicom import dcmread

    proc = _storescu(orthanc_gateway.port, dicom_file)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert orthanc_gateway.stored(str(dcmread(dicom_file).SOPInstanceUID))


def test_dcmtk_storescu_asking_for_a_positive_response_fails_against_orthanc_alone(orthanc_gateway, dicom_file):
    proc = _storescu(orthanc_gateway.orthanc.dicom_port, dicom_file)
    assert proc.returncode != 0
    assert "Positive response requested but none received" in proc.stdout + proc.stderr
