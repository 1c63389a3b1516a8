# -*- coding: utf-8 -*-
"""One nginx gateway for the gate's tests, rendered by the role's own templates, with
listeners that differ in what they allow, in front of recording pynetdicom SCPs."""

from __future__ import annotations

import shutil

import pytest
from gate_lab import (PASSCODES, GatePki, Idp, Nginx, RecordingScp, SyslogSink, free_port, loopback_listener,
                      make_root, render_gateway, skip_without_nginx)


class Gateway:
    """What the tests talk to: ports by listener name, the SCPs behind, the secrets."""

    def __init__(self, root, pki, idp):
        self.root = root
        self.pki = pki
        self.idp = idp
        self.ports = {}
        self.log_file = root / "decisions.log"
        self.upstream = None
        self.identity_upstream = None
        self.nginx = None
        self.syslog = None
        self.policy_text = ""

    def port(self, name):
        return self.ports[name]


def _identity_checker(event):
    # The PACS behind a pass-through listener checks identity itself.
    ok = event.user_id_type == 2 and PASSCODES.get(event.primary_field.decode()) == event.secondary_field.decode()
    return ok, (b"" if ok else None)


@pytest.fixture(scope="session")
def gateway():
    skip_without_nginx()
    root = make_root()
    (root / "pki").mkdir()
    pki = GatePki(root / "pki")
    idp = Idp()
    gw = Gateway(root, pki, idp)
    gw.upstream = RecordingScp()
    gw.identity_upstream = RecordingScp(ssl_context=pki.server_context(), check_identity=_identity_checker)
    names = ("plain", "username_only", "optional_identity", "tls", "tls_optional", "tls_crl", "pass_through")
    gw.ports = {name: free_port() for name in names}
    up = gw.upstream.port
    tls = {"certificate": pki.path("server.pem"), "key": pki.path("server.key")}
    listeners = [
        loopback_listener("plain", gw.ports["plain"], up, calling_aes=["CT01", "MR02"]),
        loopback_listener("username_only", gw.ports["username_only"], up, calling_aes=["CT01"],
                          identity={"types": ["username", "username_passcode"]}),
        loopback_listener("optional_identity", gw.ports["optional_identity"], up, calling_aes=["CT01"],
                          identity={"required": False}),
        loopback_listener("tls", gw.ports["tls"], up, calling_aes=["CTTLS"], tls=tls,
                          client_certificate={"ca": pki.path("ca.pem"), "mode": "required", "depth": 2}),
        loopback_listener("tls_optional", gw.ports["tls_optional"], up, calling_aes=["CTTLS"], tls=tls,
                          client_certificate={"ca": pki.path("ca.pem"), "mode": "optional"}),
        loopback_listener("tls_crl", gw.ports["tls_crl"], up, calling_aes=["CTTLS"], tls=tls,
                          client_certificate={"ca": pki.path("ca.pem"), "crl": pki.path("ca.crl"), "mode": "required"}),
        loopback_listener("pass_through", gw.ports["pass_through"], gw.identity_upstream.port, calling_aes=["CT01"],
                          identity={"types": ["username_passcode"], "pass_through": True},
                          upstream={"host": "127.0.0.1", "port": gw.identity_upstream.port,
                                    "tls": {"enabled": True, "ca": pki.path("ca.pem"), "server_name": "localhost"}}),
    ]
    role_vars = {
        "nginx_stream_proxy_listeners": listeners,
        "nginx_stream_proxy_modalities": [
            {"ae": "CT01", "sources": ["127.0.0.1/32", "::1"]},
            {"ae": "MR02", "sources": ["127.0.0.2/32"]},
            {"ae": "CTTLS", "subjects": ["CN=CT01"]},
        ],
        "nginx_stream_proxy_users": [
            {"name": "ct01tech", "passcode": PASSCODES["ct01tech"], "calling_aes": ["CT01", "CTTLS"]},
            {"name": "mr02tech", "passcode": PASSCODES["mr02tech"], "calling_aes": ["MR02"]},
            {"name": "porter", "calling_aes": ["CT01"]},
            {"name": "dr.house", "calling_aes": ["CT01"]},
        ],
        "nginx_stream_proxy_jwt": {"issuer": Idp.ISSUER, "audience": Idp.AUDIENCE, "clock_skew": 30,
                                   "jwks": idp.jwks(), "keys": [{"kid": "idp-ec", "pem": idp.ec_pem()}]},
        # Fewer iterations than the default: the fuzz test derives thousands of hashes.
        "nginx_stream_proxy_pbkdf2_iterations": 20000,
        "nginx_stream_proxy_gate_dir": str(root / "gate"),
        "nginx_stream_proxy_run_dir": str(root / "run"),
        "nginx_stream_proxy_log_file": str(gw.log_file),
        "nginx_stream_proxy_syslog": {"server": "unix:" + str(root / "journal.sock"), "tag": "dicom_gate"},
    }
    try:
        render_gateway(root, role_vars)
        (root / "run").chmod(0o755)
        gw.policy_text = (root / "gate" / "dicom_gate_policy.js").read_text()
        gw.syslog = SyslogSink(root / "journal.sock")
        gw.nginx = Nginx(root).start(gw.ports.values())
        yield gw
    finally:
        if gw.nginx is not None:
            gw.nginx.stop()
        if gw.syslog is not None:
            gw.syslog.stop()
        gw.upstream.stop()
        gw.identity_upstream.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def dicom_file(tmp_path_factory):
    """One Secondary Capture instance on disk, for DCMTK's storescu."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "GATE^TEST", "GATE-0001", "OT"
    path = tmp_path_factory.mktemp("dcm") / "sc.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(path)
