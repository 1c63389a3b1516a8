# -*- coding: utf-8 -*-
"""Real DICOM servers on free loopback ports for the verification module tests.

Every server is started by a fixture and stopped by its handle (a pynetdicom server object,
a Popen, an asyncio server in its own thread); nothing is stopped by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib
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
import warnings
from pathlib import Path

import pytest
from collections_path import collections_path
from dicom_pdus import accept_pdu, dimse_response_pdus
from lab_servers import (  # noqa: F401  (the tests import them from here)  pylint: disable=unused-import
    JWT_OK,
    LOOPBACK,
    STUDY_UIDS,
    USERS,
    Orthanc,
    ScpPolicy,
    Unavailable,
    ansible_bin,
    free_port,
    shutdown_all,
    start_scp,
    wait_port,
)
from lab_servers import stop_process as _stop

REPO = Path(__file__).resolve().parents[3]


# The collection's path, for the ansible processes the tests start (tests/conftest.py
# has already made it importable here).
COLLECTIONS_PATH = collections_path()

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import CTImageStorage, Verification  # noqa: E402

# The SCPs' identities (USERS, JWT_OK, STUDY_UIDS) live with the SCPs in tests/lab_servers.py.
SECRET_PASSCODE = USERS["ct01"]


# ---------------------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def handshake_never_completes():
    """Yield a loopback port whose TCP handshake never completes, as a silent host's does.

    A listener whose backlog is full and never accepted: the kernel drops further SYNs.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for dummy in range(8):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            try:
                filler.connect((LOOPBACK, port))
            except BlockingIOError:
                pass
            fillers.append(filler)
        yield port
    finally:
        for sock in fillers + [listener]:
            sock.close()


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
# pynetdicom SCPs, one per policy (ScpPolicy and start_scp are tests/lab_servers.py's)
# ---------------------------------------------------------------------------------------


def start_tls_scp(pki, require_client_cert=True, legacy=False, ae_title="ANY-SCP"):
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = 64
    ae.add_supported_context(Verification)
    context = pki.server_context(require_client_cert=require_client_cert, legacy=legacy)
    return ae.start_server((LOOPBACK, 0), block=False, ssl_context=context)


@pytest.fixture(scope="module")
def scp_factory():
    servers = []

    def make(policy, **kwargs):
        server = start_scp(policy, **kwargs)
        servers.append(server)
        return server.server_address[1]

    yield make
    shutdown_all(servers)


@pytest.fixture(scope="module")
def tls_scp_factory(pki):
    servers = []

    def make(**kwargs):
        server = start_tls_scp(pki, **kwargs)
        servers.append(server)
        return server.server_address[1]

    yield make
    shutdown_all(servers)


# ---------------------------------------------------------------------------------------
# Hostile TCP server
# ---------------------------------------------------------------------------------------

REJECT_CALLING = b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x03"


class LoopListeners:
    """Loopback listeners served by one asyncio loop in a thread of its own; ``listen`` opens
    one for a connection handler and returns its port, ``stop`` closes them all."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._servers = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def listen(self, handler):
        async def start():
            server = await asyncio.start_server(handler, LOOPBACK, 0)
            self._servers.append(server)
            return server.sockets[0].getsockname()[1]

        return asyncio.run_coroutine_threadsafe(start(), self.loop).result(5)

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


class HostileServer(LoopListeners):
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
        # After an A-ASSOCIATE-AC, what the answer to the operation's request is:
        "echo_failure",  # a C-ECHO-RSP with status 0xC000
        "contexts_refused",  # the AC accepts no presentation context
        "abort_on_request",  # an A-ABORT instead of a response
        "close_on_request",  # a TCP close without a PDU
        "reset_on_request",  # a TCP reset without a PDU
        "silent_after_accept",  # nothing at all
        "wrong_response",  # a C-FIND-RSP to a C-ECHO-RQ
        "giant_pdata",  # a P-DATA-TF header declaring 1 GiB
        "trickle_response",  # a valid C-ECHO-RSP, one byte a second
        "endless_pending",  # C-FIND pending responses until a C-CANCEL, then 0xFE00
        "store_warning",  # a C-STORE-RSP with the coercion warning 0xB000
    )
    # Each of these answers after an A-ASSOCIATE-AC that accepts every context proposed.
    _AFTER_ACCEPT = (
        "echo_failure", "abort_on_request", "close_on_request", "reset_on_request", "silent_after_accept",
        "wrong_response", "giant_pdata", "trickle_response", "endless_pending", "store_warning",
    )

    def __init__(self):
        super().__init__()
        self.ports = {}
        self.connections = {}
        for mode in self.MODES:
            self.ports[mode] = self.listen(lambda r, w, mode=mode: self._handle(mode, r, w))
            self.connections[mode] = 0

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
            elif mode == "contexts_refused":
                writer.write(accept_pdu(contexts=((1, 3), (3, 3), (5, 3))))
                await writer.drain()
                await self._serve_release(reader, writer)
            elif mode in self._AFTER_ACCEPT:
                writer.write(accept_pdu(contexts=((1, 0), (3, 0), (5, 0))))
                await writer.drain()
                await self._after_accept(mode, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def _read_pdu(self, reader):
        header = await reader.readexactly(6)
        length = struct.unpack(">I", header[2:6])[0]
        return header[0], await reader.readexactly(length)

    async def _serve_release(self, reader, writer):
        """Answer an A-RELEASE-RQ, ignoring anything before it."""
        while True:
            pdu_type, dummy = await self._read_pdu(reader)
            if pdu_type == 0x05:
                writer.write(b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00")
                await writer.drain()
                return

    async def _after_accept(self, mode, reader, writer):
        await self._read_pdu(reader)  # the first P-DATA-TF of the request
        if mode == "echo_failure":
            writer.write(dimse_response_pdus(0x8030, 0xC000))
        elif mode == "store_warning":
            # The rest of the C-STORE-RQ: data set fragments up to the last one (control 0x02).
            while (await self._read_pdu(reader))[1][5] != 0x02:
                pass
            writer.write(dimse_response_pdus(0x8001, 0xB000, context_id=5))
        elif mode == "abort_on_request":
            writer.write(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00")
        elif mode == "close_on_request":
            writer.close()
            return
        elif mode == "reset_on_request":
            self._rst(writer)
            return
        elif mode == "silent_after_accept":
            await asyncio.sleep(3600)
        elif mode == "wrong_response":
            writer.write(dimse_response_pdus(0x8020, 0x0000))
        elif mode == "giant_pdata":
            writer.write(b"\x04\x00\x40\x00\x00\x00" + b"\x00" * 1024)
            await writer.drain()
            await asyncio.sleep(3600)
        elif mode == "trickle_response":
            for byte in dimse_response_pdus(0x8030, 0x0000):
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1)
        elif mode == "endless_pending":
            await self._endless_pending(reader, writer)
            return
        await writer.drain()
        await self._serve_release(reader, writer)

    async def _endless_pending(self, reader, writer):
        """Pending C-FIND responses until the client sends a C-CANCEL-RQ."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = "1.2.826.0.1.3680043.10.1234.9"
        pending = dimse_response_pdus(0x8020, 0xFF00, data_set=identifier, context_id=3)
        await self._read_pdu(reader)  # the C-FIND-RQ's identifier, after its command
        cancelled = asyncio.ensure_future(self._read_pdu(reader))
        sent = 0
        while not cancelled.done():
            writer.write(pending)
            await writer.drain()
            sent += 1
            if sent % 50 == 0:
                await asyncio.sleep(0)
        self.sent_pending = sent
        writer.write(dimse_response_pdus(0x8020, 0xFE00, context_id=3))
        await writer.drain()
        await self._serve_release(reader, writer)


@pytest.fixture(scope="module")
def hostile():
    server = HostileServer()
    yield server
    server.stop()


# ---------------------------------------------------------------------------------------
# DCMTK storescp and Orthanc from the distribution
# ---------------------------------------------------------------------------------------


def _storescp(out):
    """DCMTK's storescp, writing what it is sent into ``out``; yields its port."""
    binary = shutil.which("storescp", path="/usr/bin:/usr/local/bin") or shutil.which("storescp")
    if binary is None:
        pytest.skip("DCMTK storescp is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--fork", "-aet", "STORESCP", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc=proc)
        yield port
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def storescp(tmp_path_factory):
    yield from _storescp(tmp_path_factory.mktemp("storescp"))


@pytest.fixture
def storescp_with_dir(tmp_path):
    """A storescp of the test's own and the directory it stores into, empty at the start."""
    out = tmp_path / "storescp"
    out.mkdir()
    for port in _storescp(out):
        yield port, out


# The modalities a test Orthanc knows, as pacs_identity_modalities. CT01 may use every
# service, as an AE registered the simplest way ([AET, host, port]) may. MR02 (in the
# hardened instance and the modules' examples) has the role's default, C-ECHO only: its
# association is accepted and its C-FIND or C-STORE refused by the per-service permission.
ORTHANC_MODALITIES = [
    {"name": "ct01", "aet": "CT01", "host": LOOPBACK, "port": 104, "allow": ["echo", "find", "get", "move", "store"]},
    {"name": "mr02", "aet": "MR02", "host": LOOPBACK, "port": 104},
]
# An idle association is dropped after 5 s instead of Orthanc's 30, so a test that leaves
# one open does not hold a server thread for the rest of the session.
ORTHANC_OPTIONS = {"DicomScpTimeout": 5}


def _orthanc(root, hardened, dicom_port=None):
    """A started Orthanc: hardened, configured by pacs_identity's own templates and vars
    (TLS off); else as packaged, knowing CT01 only."""
    modalities = ORTHANC_MODALITIES if hardened else ORTHANC_MODALITIES[:1]
    orthanc = Orthanc(root, hardened=hardened, modalities=modalities, dicom_port=dicom_port,
                      extra_options=ORTHANC_OPTIONS)
    try:
        return orthanc.start()
    except Unavailable as exc:
        pytest.skip(str(exc))


def _start_orthanc(root, hardened, dicom_port=None):
    """Start a test Orthanc; return (process, log file, DICOM port), to be stopped with
    ``_stop(process, graceful=False)`` and the log closed."""
    orthanc = _orthanc(root, hardened, dicom_port)
    return orthanc.proc, orthanc.log, orthanc.dicom_port


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
    orthanc = _orthanc(tmp_path_factory.mktemp("orthanc-open"), hardened=False)
    try:
        store_test_study(orthanc.dicom_port)
        yield orthanc.dicom_port
    finally:
        orthanc.stop()


@pytest.fixture(scope="session")
def orthanc_hardened_server(tmp_path_factory):
    """The hardened Orthanc itself (its rendered ``config``, ``environment``, ports)."""
    orthanc = _orthanc(tmp_path_factory.mktemp("orthanc-hardened"), hardened=True)
    try:
        yield orthanc
    finally:
        orthanc.stop()


@pytest.fixture(scope="session")
def orthanc_hardened(orthanc_hardened_server):
    return orthanc_hardened_server.dicom_port


# ---------------------------------------------------------------------------------------
# Running the real modules through ansible
# ---------------------------------------------------------------------------------------


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


def module_argument_spec(module):
    """Capture the module's argument_spec by running main() with a stub AnsibleModule."""
    mod = importlib.import_module("ansible_collections.dicomsec.hardening.plugins.modules." + module)
    captured = {}

    class Stop(Exception):
        pass

    def fake(argument_spec, **kwargs):
        captured["spec"] = argument_spec
        raise Stop()

    original = mod.AnsibleModule
    mod.AnsibleModule = fake
    try:
        mod.main()
    except Stop:
        pass
    finally:
        mod.AnsibleModule = original
    return mod, captured["spec"]
