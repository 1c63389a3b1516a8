# -*- coding: utf-8 -*-
"""The loopback servers that tests and benchmarks start, one of each.

- ``free_port`` and ``wait_port``: a free loopback port, and waiting until a server listens;
- ``Orthanc``: Debian's Orthanc in a directory of its own, configured either by the
  ``pacs_identity`` role's own templates (rendered by ansible with the role's defaults,
  vars and input checks) or as packaged;
- ``start_scp``: pynetdicom SCPs with the access policies the tests name (``ScpPolicy``),
  among them the calling-AE whitelist.

Every server is stopped by its handle (a Popen, a pynetdicom server object), never by name.
Nothing here imports pytest: a missing program raises ``Unavailable``, which a test turns
into a skip and a benchmark into a message.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from collections_path import collections_path

REPO = Path(__file__).resolve().parents[1]
PACS_IDENTITY = REPO / "roles" / "pacs_identity"
LOOPBACK = "127.0.0.1"

# The identities the lab's SCPs know; all synthetic.
CALLING_WHITELIST = ("CT01", "MR02")
STUDY_UIDS = ["1.2.826.0.1.3680043.10.1234.1", "1.2.826.0.1.3680043.10.1234.2"]
USERS = {"ct01": "correct-horse-battery", "mr02": "tr0ub4dor"}
JWT_OK = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJjdDAxIn0."


class Unavailable(Exception):
    """A program a server needs is not installed on this host."""


# ---------------------------------------------------------------------------------------
# Ports and processes
# ---------------------------------------------------------------------------------------


def free_port(host=LOOPBACK):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_port(port, host=LOOPBACK, timeout=15.0, proc=None):
    """Return once something accepts connections on host:port; with ``proc``, fail as soon
    as that process has exited instead of waiting out the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("the server exited with %s before listening on %s:%d" % (proc.returncode, host, port))
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on %s:%d" % (host, port))


def stop_process(proc, graceful=True):
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


def ansible_bin(name):
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


# ---------------------------------------------------------------------------------------
# Orthanc
# ---------------------------------------------------------------------------------------


def read_orthanc_json(path):
    """Parse an Orthanc configuration file as Orthanc and the role's ``validate:`` do:
    ``//`` comment lines (the ansible_managed header) are not JSON."""
    text = Path(path).read_text(encoding="utf-8")
    return json.loads(re.sub(r"(?m)^[ \t]*//.*$", "", text))


def _render_playbook(out):
    def template(name, dest, **extra):
        return {"src": str(PACS_IDENTITY / "templates" / name), "dest": str(out / dest), "mode": "0600", **extra}

    spec = "(lookup('ansible.builtin.file', %s) | from_yaml)['argument_specs']['main']['options']" % json.dumps(
        str(PACS_IDENTITY / "meta" / "argument_specs.yml"))
    return [{
        "name": "Render pacs_identity's Orthanc configuration for a server on loopback",
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [
            {"name": "Refuse what the role's argument_specs refuse",
             "ansible.builtin.validate_argument_spec": {"argument_spec": "{{ %s }}" % spec}},
            {"name": "Load Debian's names and paths, as the role's entry point does",
             "ansible.builtin.include_vars": str(PACS_IDENTITY / "vars" / "Debian.yml")},
            {"name": "Load the role's defaults and vars and run its own input checks",
             "ansible.builtin.include_role": {"name": "dicomsec.hardening.pacs_identity",
                                              "tasks_from": "validate.yml", "public": True}},
            {"name": "Render orthanc.json, parsed as the role parses it",
             "ansible.builtin.template": template("orthanc.json.j2", "config/orthanc.json",
                                                  validate="{{ pacs_identity__json_check }}")},
            {"name": "Render the REST users",
             "ansible.builtin.template": template("credentials.json.j2", "config/credentials.json",
                                                  validate="{{ pacs_identity__json_check }}"),
             "no_log": True},
            {"name": "Render the systemd drop-in, whose Environment= lines the server gets",
             "ansible.builtin.template": template("orthanc-dropin.conf.j2", "render/orthanc-dropin.conf")},
        ],
    }]


def render_pacs_identity(root, role_vars):
    """Write what pacs_identity writes for ``role_vars`` into ``root``: config/orthanc.json,
    config/credentials.json and render/orthanc-dropin.conf. Return the environment the
    drop-in gives Orthanc.

    The role's own templates, defaults, vars and checks are used through ansible, so a
    change to the role changes every server started from here, and variables the role
    refuses are refused here with the role's message.
    """
    root = Path(root)
    (root / "config").mkdir(parents=True, exist_ok=True)
    render = root / "render"
    render.mkdir(exist_ok=True)
    playbook = render / "playbook.json"
    playbook.write_text(json.dumps(_render_playbook(root)))
    # The variables include the REST password: a file only we can read, not the command line.
    extra_vars = render / "vars.json"
    fd = os.open(extra_vars, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(role_vars, handle)
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=collections_path(),
        ANSIBLE_STDOUT_CALLBACK="json",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
    )
    cmd = [ansible_bin("ansible-playbook"), "-i", "localhost,", "-c", "local", "-e", "@" + str(extra_vars), str(playbook)]
    try:
        proc = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=120, check=False)
    finally:
        extra_vars.unlink()
    if proc.returncode != 0:
        raise RuntimeError("pacs_identity did not render Orthanc's configuration: %s" % _failure(proc))
    environment = {}
    for line in (render / "orthanc-dropin.conf").read_text(encoding="utf-8").splitlines():
        if line.startswith("Environment="):
            key, _sep, value = line[len("Environment="):].partition("=")
            environment[key] = value
    return environment


def _failure(proc):
    try:
        data = json.loads(proc.stdout[proc.stdout.index("{"):])
        for task in data["plays"][0]["tasks"]:
            result = task["hosts"].get("localhost", {})
            if result.get("failed"):
                # A loop's own message only says that an item failed; the item's says why.
                items = [r for r in result.get("results", []) if r.get("failed")]
                return "%s: %s" % (task["task"]["name"], (items[0] if items else result).get("msg"))
    except (ValueError, KeyError, IndexError):
        pass
    return (proc.stdout + proc.stderr).strip()[-2000:]


def packaged_config(storage, dicom_port, http_port, aet, modalities):
    """Orthanc as packaged: its own access defaults (any calling AE may echo and store),
    with only storage, ports, the REST lockdown and the modalities set, each modality
    registered the simplest way ([AET, host, port]: every service allowed)."""
    return {
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "Plugins": [],
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {"lab": os.urandom(16).hex()},
        "DicomModalities": {m["name"]: [m["aet"], m["host"], m.get("port", 104)] for m in modalities},
    }


class Orthanc:
    """Debian's Orthanc on loopback, in ``root``, stopped by its handle.

    hardened: configured by pacs_identity (``render_pacs_identity``), TLS off, with
    ``modalities`` as ``pacs_identity_modalities`` and ``extra_options`` as
    ``pacs_identity_orthanc_extra_options``; else as packaged (``packaged_config``).
    tcp_nodelay: ``pacs_identity_tcp_nodelay``; the environment is the one the role's
    systemd drop-in gives (as packaged: TCP_NODELAY=1 or unset).
    """

    def __init__(self, root, hardened=True, modalities=(), aet="ORTHANC", dicom_port=None, tcp_nodelay=True,
                 extra_options=None):
        self.root = Path(root)
        self.hardened = hardened
        self.modalities = [dict(m) for m in modalities]
        self.aet = aet
        self.dicom_port = dicom_port or free_port()
        self.http_port = free_port()
        self.tcp_nodelay = tcp_nodelay
        self.extra_options = dict(extra_options or {})
        self.config_dir = self.root / "config"
        self.log_path = self.root / "orthanc.log"
        self.config = None
        self.environment = None
        self.proc = None
        self.log = None

    @staticmethod
    def binary():
        found = shutil.which("Orthanc", path="/usr/sbin:/usr/bin") or shutil.which("Orthanc")
        if found is None:
            raise Unavailable("Orthanc is not installed (Debian package orthanc)")
        return found

    def _configure(self):
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        if self.hardened:
            self.environment = render_pacs_identity(self.root, {
                "pacs_identity_aet": self.aet,
                "pacs_identity_dicom_port": self.dicom_port,
                "pacs_identity_rest_port": self.http_port,
                "pacs_identity_modalities": self.modalities,
                "pacs_identity_rest_users": [{"name": "lab", "password": os.urandom(16).hex()}],
                "pacs_identity_tls_enabled": False,
                "pacs_identity_tcp_nodelay": self.tcp_nodelay,
                # The distribution's plugins would open more than the DICOM and REST ports.
                "pacs_identity_orthanc_plugins": [],
                "pacs_identity_orthanc_extra_options": self.extra_options,
                "pacs_identity__orthanc_storage_dir": str(storage),
            })
        else:
            self.config_dir.mkdir(parents=True, exist_ok=True)
            config = packaged_config(storage, self.dicom_port, self.http_port, self.aet, self.modalities)
            config.update(self.extra_options)
            path = self.config_dir / "orthanc.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(config, handle)
            self.environment = {"TCP_NODELAY": "1"} if self.tcp_nodelay else {}
        # Orthanc merges every .json file of the directory it is given, as under /etc/orthanc.
        self.config = {}
        for path in sorted(self.config_dir.glob("*.json")):
            self.config.update(read_orthanc_json(path))

    def start(self):
        # Rendered first: variables the role refuses are refused wherever Orthanc is missing too.
        self._configure()
        binary = self.binary()
        env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
        env.update(self.environment)
        # Both live as long as the server; stop() closes them.
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([binary, str(self.config_dir)], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_port(self.dicom_port, timeout=30, proc=self.proc)
        except RuntimeError as exc:
            self.stop()
            tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RuntimeError("%s; Orthanc's log ends:\n%s" % (exc, tail)) from None
        return self

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, graceful=False)
        if self.log is not None:
            self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------------------------------
# pynetdicom SCPs, one per policy
# ---------------------------------------------------------------------------------------


def _find_handler(studies):
    def handler(event):
        from pydicom.dataset import Dataset

        for uid in studies:
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.StudyInstanceUID = uid
            yield 0xFF00, identifier

    return handler


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


# The move destinations an SCP knows; any other is refused with 0xA801 unless the policy is
# MOVE_ANY_DESTINATION.
MOVE_DESTINATIONS = {"CT01": (LOOPBACK, 104)}


def _move_handler(any_destination):
    def handler(event):
        destination = MOVE_DESTINATIONS.get(event.move_destination.strip())
        if destination is None and any_destination:
            # What an archive that does not check destinations does: it would connect to
            # whatever the caller names; there is nothing to send for this study.
            destination = (LOOPBACK, 1)
        yield destination if destination is not None else (None, None)
        yield 0

    return handler


def _get_handler(event):
    # No study matches: zero sub-operations, success (PS3.4 C.4.3.3.1).
    yield 0


def _store_handler(status, stored):
    def handler(event):
        stored.append(event.dataset)
        return status

    return handler


class ScpPolicy:
    OPEN = "open"
    CALLING_WHITELIST = "calling_whitelist"
    CALLED_CHECK = "called_check"
    STRICT_AE = "strict_ae"  # calling whitelist and called AE check together
    CALLED_ALIASES = "called_aliases"  # called AE checked, but the default PACS also accepted
    IDENTITY = "identity"
    NO_POSITIVE_RESPONSE = "no_positive_response"  # open, but refuses positive-response requests
    STORE_REFUSED = "store_refused"  # open, but answers every C-STORE with 0xA700 (out of resources)
    MOVE_ANY_DESTINATION = "move_any_destination"  # open, and a C-MOVE to any destination AE succeeds
    TLS = "tls"
    TLS_LEGACY = "tls_legacy"


def start_scp(policy, host=LOOPBACK, ae_title="ANY-SCP", port=0, studies=None, calling_aes=None,
              ssl_context=None):
    """A pynetdicom SCP for Verification, Study Root C-FIND (answering ``studies``, by
    default STUDY_UIDS), Study Root C-MOVE (to MOVE_DESTINATIONS only, 0xA801 for any other)
    and C-GET (no study matches), and Secondary Capture C-STORE (the data sets it was sent
    are in ``server.stored``) with ``policy``'s access control; return the running server (stop
    it with ``shutdown()``). ``calling_aes`` whitelists those calling AE titles (1/1/3 for
    any other) whatever the policy; ``ssl_context`` makes it speak DICOM TLS."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import (
        SecondaryCaptureImageStorage,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelMove,
        Verification,
    )

    ae = AE(ae_title=ae_title)
    ae.maximum_associations = 64
    ae.network_timeout = 5
    ae.acse_timeout = 5
    ae.add_supported_context(Verification)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(SecondaryCaptureImageStorage)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    stored = []
    store_status = 0xA700 if policy == ScpPolicy.STORE_REFUSED else 0x0000
    handlers = [
        (evt.EVT_C_FIND, _find_handler(tuple(STUDY_UIDS if studies is None else studies))),
        (evt.EVT_C_STORE, _store_handler(store_status, stored)),
        (evt.EVT_C_MOVE, _move_handler(policy == ScpPolicy.MOVE_ANY_DESTINATION)),
        (evt.EVT_C_GET, _get_handler),
    ]
    if policy == ScpPolicy.CALLING_WHITELIST:
        ae.require_calling_aet = list(CALLING_WHITELIST)
    elif policy == ScpPolicy.CALLED_CHECK:
        ae.require_called_aet = True
    elif policy == ScpPolicy.STRICT_AE:
        ae.require_calling_aet = list(CALLING_WHITELIST)
        ae.require_called_aet = True
    elif policy == ScpPolicy.CALLED_ALIASES:
        handlers.append((evt.EVT_REQUESTED, _called_aliases))
    elif policy == ScpPolicy.IDENTITY:
        handlers += [(evt.EVT_USER_ID, _user_id_handler), (evt.EVT_REQUESTED, _require_identity)]
    elif policy == ScpPolicy.NO_POSITIVE_RESPONSE:
        handlers.append((evt.EVT_REQUESTED, _refuse_positive_response))
    elif policy in (ScpPolicy.TLS, ScpPolicy.TLS_LEGACY):
        raise ValueError("use start_tls_scp")
    if calling_aes is not None:
        ae.require_calling_aet = list(calling_aes)
    server = ae.start_server((host, port), block=False, evt_handlers=handlers, ssl_context=ssl_context)
    server.stored = stored
    return server


def shutdown_all(servers):
    # pynetdicom's shutdown waits for its poll loop; stop them side by side.
    threads = [threading.Thread(target=server.shutdown) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)


# ---------------------------------------------------------------------------------------
# What the benchmarks store and read
# ---------------------------------------------------------------------------------------


class Instances:
    """N CT instances of SIZE KB of pixel data; ``refresh`` gives them new SOP Instance UIDs."""

    def __init__(self, directory, count, size_kb):
        from pydicom.dataset import FileDataset, FileMetaDataset
        from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        side = int((size_kb * 1024 // 2) ** 0.5)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("bench", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.PatientID = "BENCH"
        ds.PatientName = "Bench^Mark"
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1234.1"
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1234.1.1"
        ds.Modality = "CT"
        ds.Rows = ds.Columns = side
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = os.urandom(side * side * 2)
        self.dataset = ds
        self.files = [self.directory / ("%05d.dcm" % i) for i in range(count)]
        self.pixel_bytes = count * len(ds.PixelData)
        self.refresh()

    def refresh(self):
        from pydicom.uid import generate_uid

        for path in self.files:
            uid = generate_uid()
            self.dataset.SOPInstanceUID = uid
            self.dataset.file_meta.MediaStorageSOPInstanceUID = uid
            self.dataset.save_as(path, enforce_file_format=True)


def cpu_seconds(pids):
    """User and system CPU seconds so far of running processes (all their threads), from /proc;
    a process that has gone counts nothing."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def read_pdu(sock):
    """Read one whole PDU from a blocking socket; return its type."""
    header = b""
    while len(header) < 6:
        chunk = sock.recv(6 - len(header))
        if not chunk:
            raise RuntimeError("connection closed")
        header += chunk
    pdu_type, _reserved, length = struct.unpack(">BBI", header)
    while length:
        chunk = sock.recv(min(length, 65536))
        if not chunk:
            raise RuntimeError("connection closed")
        length -= len(chunk)
    return pdu_type
