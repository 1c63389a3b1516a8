# -*- coding: utf-8 -*-
"""Real DICOM servers on free loopback ports for the verification module tests.

Every server is started by a fixture and stopped by its handle (a pynetdicom server object,
a Popen, an asyncio server in its own thread); nothing is stopped by name.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from collections_path import collections_path
from dicom_pdus import accept_pdu
from orthanc_access import HARDENED_ACCESS

REPO = Path(__file__).resolve().parents[3]


# The collection's path, for the ansible processes the tests start (tests/conftest.py
# has already made it importable here).
COLLECTIONS_PATH = collections_path()

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

LOOPBACK = "127.0.0.1"
# A study the find tests can count; its identifiers are synthetic.
STUDY_UIDS = ["1.2.826.0.1.3680043.10.1234.1", "1.2.826.0.1.3680043.10.1234.2"]
USERS = {"ct01": "correct-horse-battery", "mr02": "tr0ub4dor"}
JWT_OK = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJjdDAxIn0."
SECRET_PASSCODE = USERS["ct01"]


def free_port(host=LOOPBACK):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_port(port, host=LOOPBACK, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on %s:%d" % (host, port))


# ---------------------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------------------


class Pki:
    """A CA, a server certificate for localhost/127.0.0.1/::1, a trusted client certificate
    and a client certificate from a different CA."""

    def __init__(self, root):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.root = Path(root)
        now = datetime.datetime.now(datetime.timezone.utc)

        def name(cn):
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def write_key(key, path):
            path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )

        def ca(cn, stem):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (
                x509.CertificateBuilder()
                .subject_name(name(cn))
                .issuer_name(name(cn))
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256())
            )
            (self.root / (stem + ".pem")).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            return key, cert

        def leaf(cn, stem, ca_key, ca_cert, server):
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(name(cn))
                .issuer_name(ca_cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
            )
            if server:
                builder = builder.add_extension(
                    x509.SubjectAlternativeName(
                        [
                            x509.DNSName("localhost"),
                            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                            x509.IPAddress(ipaddress.ip_address("::1")),
                        ]
                    ),
                    critical=False,
                )
            cert = builder.sign(ca_key, hashes.SHA256())
            (self.root / (stem + ".pem")).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            write_key(key, self.root / (stem + ".key"))

        ca_key, ca_cert = ca("dicomsec test CA", "ca")
        other_key, other_cert = ca("untrusted test CA", "other-ca")
        leaf("localhost", "server", ca_key, ca_cert, True)
        leaf("CT01", "client", ca_key, ca_cert, False)
        leaf("INTRUDER", "intruder", other_key, other_cert, False)

    def path(self, stem):
        return str(self.root / stem)

    def client_tls(self, **extra):
        tls = {
            "enabled": True,
            "ca_file": self.path("ca.pem"),
            "cert_file": self.path("client.pem"),
            "key_file": self.path("client.key"),
            "server_name": "localhost",
        }
        tls.update(extra)
        return tls

    def server_context(self, require_client_cert=True, legacy=False):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.path("server.pem"), self.path("server.key"))
        if legacy:
            # A deliberately outdated server: TLS 1.0/1.1 need OpenSSL's security level 0.
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = ssl.TLSVersion.TLSv1
        else:
            context.minimum_version = ssl.TLSVersion.TLSv1_2
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.path("ca.pem"))
        return context


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


# ---------------------------------------------------------------------------------------
# pynetdicom SCPs, one per policy
# ---------------------------------------------------------------------------------------


def _find_handler(event):
    for uid in STUDY_UIDS:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = uid
        yield 0xFF00, identifier


def _user_id_handler(event):
    if event.user_id_type == 2:
        username = event.primary_field.decode()
        ok = USERS.get(username) == event.secondary_field.decode()
        return ok, None
    if event.user_id_type == 5:
        ok = event.primary_field.decode() == JWT_OK
        return ok, (b"session-ok" if ok else None)
    return False, None


def _require_identity(event):
    # pynetdicom only asks EVT_USER_ID when the request carries identity; a request
    # without it must be turned away here, or it is accepted unauthenticated.
    if event.assoc.requestor.user_identity is None:
        event.assoc.acse.send_reject(0x01, 0x01, 0x01)
        event.assoc.kill()


def _called_aliases(event):
    # A server that checks the called AE but also answers to a vendor default title.
    if event.assoc.requestor.primitive.called_ae_title.strip() not in ("PACS01", "PACS"):
        event.assoc.acse.send_reject(0x01, 0x01, 0x07)
        event.assoc.kill()


def _refuse_positive_response(event):
    # A server that turns away any request for a positive identity response (no real
    # product known to us; it proves the audit never fails the authorized check on a
    # request the authorized client would not send).
    user_identity = event.assoc.requestor.user_identity
    if user_identity is not None and user_identity.positive_response_requested:
        event.assoc.acse.send_reject(0x01, 0x01, 0x01)
        event.assoc.kill()


class ScpPolicy:
    OPEN = "open"
    CALLING_WHITELIST = "calling_whitelist"
    CALLED_CHECK = "called_check"
    STRICT_AE = "strict_ae"  # calling whitelist and called AE check together
    CALLED_ALIASES = "called_aliases"  # called AE checked, but the default PACS also accepted
    IDENTITY = "identity"
    NO_POSITIVE_RESPONSE = "no_positive_response"  # open, but refuses positive-response requests
    TLS = "tls"
    TLS_LEGACY = "tls_legacy"


def start_scp(policy, host=LOOPBACK, ae_title="ANY-SCP", port=0):
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = 64
    ae.network_timeout = 5
    ae.acse_timeout = 5
    ae.add_supported_context(Verification)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    handlers = [(evt.EVT_C_FIND, _find_handler)]
    kwargs = {}
    if policy == ScpPolicy.CALLING_WHITELIST:
        ae.require_calling_aet = ["CT01", "MR02"]
    elif policy == ScpPolicy.CALLED_CHECK:
        ae.require_called_aet = True
    elif policy == ScpPolicy.STRICT_AE:
        ae.require_calling_aet = ["CT01", "MR02"]
        ae.require_called_aet = True
    elif policy == ScpPolicy.CALLED_ALIASES:
        handlers.append((evt.EVT_REQUESTED, _called_aliases))
    elif policy == ScpPolicy.IDENTITY:
        handlers += [(evt.EVT_USER_ID, _user_id_handler), (evt.EVT_REQUESTED, _require_identity)]
    elif policy == ScpPolicy.NO_POSITIVE_RESPONSE:
        handlers.append((evt.EVT_REQUESTED, _refuse_positive_response))
    elif policy in (ScpPolicy.TLS, ScpPolicy.TLS_LEGACY):
        raise ValueError("use start_tls_scp")
    server = ae.start_server((host, port), block=False, evt_handlers=handlers, **kwargs)
    return server


def start_tls_scp(pki, require_client_cert=True, legacy=False, ae_title="ANY-SCP"):
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = 64
    ae.add_supported_context(Verification)
    context = pki.server_context(require_client_cert=require_client_cert, legacy=legacy)
    return ae.start_server((LOOPBACK, 0), block=False, ssl_context=context)


def _shutdown_all(servers):
    # pynetdicom's shutdown waits for its poll loop; stop them side by side.
    threads = [threading.Thread(target=server.shutdown) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)


@pytest.fixture(scope="module")
def scp_factory():
    servers = []

    def make(policy, **kwargs):
        server = start_scp(policy, **kwargs)
        servers.append(server)
        return server.server_address[1]

    yield make
    _shutdown_all(servers)


@pytest.fixture(scope="module")
def tls_scp_factory(pki):
    servers = []

    def make(**kwargs):
        server = start_tls_scp(pki, **kwargs)
        servers.append(server)
        return server.server_address[1]

    yield make
    _shutdown_all(servers)


# ---------------------------------------------------------------------------------------
# Hostile TCP server
# ---------------------------------------------------------------------------------------

REJECT_CALLING = b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x03"


class HostileServer:
    """One loopback listener per misbehaviour, all served by one asyncio loop in a thread.

    Modes: ``garbage`` (HTTP-looking bytes), ``endless`` (an A-ASSOCIATE-AC header that
    promises 200 KB and then trickles a byte a second), ``giant`` (a header claiming
    4 GiB), ``reset`` (RST right after the request), ``close`` (orderly close), ``silence``,
    ``reject_then_reset`` (a valid A-ASSOCIATE-RJ and an immediate RST),
    ``abort`` (an A-ABORT), ``ac_then_garbage`` (a valid AC, then garbage instead of the
    C-ECHO response), ``truncated_ac`` (AC header then close).
    """

    MODES = (
        "garbage", "endless", "giant", "reset", "close", "silence",
        "reject_then_reset", "abort", "ac_then_garbage", "truncated_ac",
    )

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.ports = {}
        self.connections = {}
        self._servers = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        for mode in self.MODES:
            future = asyncio.run_coroutine_threadsafe(self._start(mode), self.loop)
            self.ports[mode] = future.result(5)
            self.connections[mode] = 0

    async def _start(self, mode):
        server = await asyncio.start_server(
            lambda r, w, mode=mode: self._handle(mode, r, w), LOOPBACK, 0
        )
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    @staticmethod
    def _rst(writer):
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _read_rq(self, reader):
        header = await reader.readexactly(6)
        length = struct.unpack(">I", header[2:6])[0]
        return header + await reader.readexactly(length)

    async def _handle(self, mode, reader, writer):
        self.connections[mode] += 1
        try:
            if mode == "silence":
                await asyncio.sleep(3600)
            await self._read_rq(reader)
            if mode == "garbage":
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.2)
            elif mode == "endless":
                writer.write(b"\x02\x00" + struct.pack(">I", 200000))
                while True:
                    writer.write(b"\x00")
                    await writer.drain()
                    await asyncio.sleep(1)
            elif mode == "giant":
                writer.write(b"\x02\x00\xff\xff\xff\xff" + b"\x00" * 65536)
                await writer.drain()
                await asyncio.sleep(3600)
            elif mode == "reset":
                self._rst(writer)
                return
            elif mode == "close":
                pass
            elif mode == "reject_then_reset":
                writer.write(REJECT_CALLING)
                await writer.drain()
                self._rst(writer)
                return
            elif mode == "abort":
                writer.write(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00")
                await writer.drain()
            elif mode == "ac_then_garbage":
                writer.write(accept_pdu())
                await writer.drain()
                await reader.read(65536)
                writer.write(b"\xde\xad\xbe\xef" * 4)
                await writer.drain()
                await asyncio.sleep(0.5)
            elif mode == "truncated_ac":
                writer.write(b"\x02\x00\x00\x00\x01\x00\x00\x01")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if not writer.transport.is_closing():
                writer.close()

    def stop(self):
        async def close_all():
            for server in self._servers:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="module")
def hostile():
    server = HostileServer()
    yield server
    server.stop()


# ---------------------------------------------------------------------------------------
# DCMTK storescp and Orthanc from the distribution
# ---------------------------------------------------------------------------------------


def _stop(proc, graceful=True):
    if proc.poll() is None and not graceful:
        # A throwaway instance on temporary storage: no need to wait for a clean shutdown.
        proc.kill()
        proc.wait(5)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def storescp(tmp_path_factory):
    binary = shutil.which("storescp", path="/usr/bin:/usr/local/bin") or shutil.which("storescp")
    if binary is None:
        pytest.skip("DCMTK storescp is not installed")
    out = tmp_path_factory.mktemp("storescp")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--fork", "-aet", "STORESCP", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield port
    finally:
        _stop(proc)


def orthanc_config(storage, http_port, dicom_port, hardened):
    config = {
        "Name": "dicomsec-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {"test": "test-only-password"},
        "Plugins": [],
        "DicomScpTimeout": 5,
        # Registered so the open instance has a modality that may query; every other
        # default (any calling AE may echo and store) is left as packaged.
        "DicomModalities": {"ct01": ["CT01", LOOPBACK, 104]},
    }
    if hardened:
        config.update(HARDENED_ACCESS)
    return config


def _start_orthanc(root, hardened, dicom_port=None):
    binary = shutil.which("Orthanc", path="/usr/sbin:/usr/bin") or shutil.which("Orthanc")
    if binary is None:
        pytest.skip("Orthanc is not installed")
    storage = root / "storage"
    storage.mkdir()
    http_port, dicom_port = free_port(), dicom_port or free_port()
    config = root / "config.json"
    config.write_text(json.dumps(orthanc_config(storage, http_port, dicom_port, hardened)))
    env = dict(os.environ, TCP_NODELAY="1")
    log = open(root / "orthanc.log", "wb")
    proc = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port(dicom_port, timeout=30)
    except RuntimeError:
        _stop(proc, graceful=False)
        log.close()
        raise
    return proc, log, dicom_port


def store_test_study(port, called_ae="ORTHANC", calling_ae="CT01"):
    """Store one synthetic CT instance so a C-FIND has something to count."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = STUDY_UIDS[0]
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "SYNTH-0001"
    ds.PatientName = "Synthetic^Test"
    ds.Modality = "CT"
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(LOOPBACK, port, ae_title=called_ae)
    assert assoc.is_established, "could not store the test study"
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0


@pytest.fixture(scope="session")
def orthanc_open(tmp_path_factory):
    proc, log, port = _start_orthanc(tmp_path_factory.mktemp("orthanc-open"), hardened=False)
    try:
        store_test_study(port)
        yield port
    finally:
        _stop(proc, graceful=False)
        log.close()


@pytest.fixture(scope="session")
def orthanc_hardened(tmp_path_factory):
    proc, log, port = _start_orthanc(tmp_path_factory.mktemp("orthanc-hardened"), hardened=True)
    try:
        yield port
    finally:
        _stop(proc, graceful=False)
        log.close()


# ---------------------------------------------------------------------------------------
# Running the real modules through ansible
# ---------------------------------------------------------------------------------------


def ansible_bin(name):
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def run_module(module, args, *extra, check=False, verbosity=0, interpreter=None):
    """Run a module with ``ansible localhost -m`` from the checkout; return (rc, output, json)."""
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_PATH,
        ANSIBLE_STDOUT_CALLBACK="json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_PYTHON_INTERPRETER=interpreter or sys.executable,
        ANSIBLE_NOCOLOR="1",
    )
    cmd = [
        ansible_bin("ansible"), "localhost", "-i", "localhost,", "-c", "local",
        "-m", "dicomsec.hardening." + module, "-a", json.dumps(args),
    ]
    if check:
        cmd.append("--check")
    if verbosity:
        cmd.append("-" + "v" * verbosity)
    cmd.extend(extra)
    proc = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=120, check=False)
    output = proc.stdout + proc.stderr
    data = None
    try:
        start = proc.stdout.index("{")
        data = json.loads(proc.stdout[start:])
        data = data["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        pass
    return proc.returncode, output, data
