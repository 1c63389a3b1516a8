# -*- coding: utf-8 -*-
"""Running playbooks/verify.yml and audit.yml for real against DICOM servers on loopback.

``run_verify`` writes an inventory of one TLS PACS on a loopback port and one position
(the controller itself, in the modalities or the outsiders group), runs the playbook with
ansible-playbook and returns the JSON callback's result of every task for that position.
The reports go to ``reports_dir(tmp_path)``; ``load_reports`` reads the three of them.
``start_tls_pacs`` is a pynetdicom SCP with DICOM TLS and required client certificates
(dicom_lab's Pki), which may whitelist calling AE titles and stores what it is sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from dicom_lab import COLLECTIONS_PATH, LOOPBACK, ansible_bin
from lab_servers import ScpPolicy, start_scp

REPO = Path(__file__).resolve().parents[3]
PLAYBOOK = REPO / "playbooks" / "verify.yml"
AUDIT_PLAYBOOK = REPO / "playbooks" / "audit.yml"
PACS = "lab-pacs"
# The position's inventory name in each group.
POSITIONS = {"modalities": "lab-modality", "outsiders": "lab-outsider", "probes": "lab-probe"}
# The AE title the inventory registers with the PACS.
REGISTERED_AE = "CT01"


def client_tls(pki, client="client"):
    """dicomsec_probe_tls for a position holding Pki's trusted (client) or untrusted
    (intruder) certificate."""
    return {
        "ca_file": pki.path("ca.pem"),
        "cert_file": pki.path(client + ".pem"),
        "key_file": pki.path(client + ".key"),
        "server_name": "localhost",
    }


def start_tls_pacs(pki, calling_aes=None, store_status=0x0000):
    """A TLS SCP requiring client certificates from Pki's CA. With ``calling_aes`` it
    rejects every other calling AE title (1/1/3), as Orthanc does for an unknown title or a
    registered one calling from an address it is not bound to. A C-STORE is answered with
    success, or refused (0xA700) when ``store_status`` says so; the datasets it was sent
    are in ``server.stored``."""
    policy = ScpPolicy.OPEN if store_status == 0x0000 else ScpPolicy.STORE_REFUSED
    return start_scp(policy, calling_aes=calling_aes, ssl_context=pki.server_context())


def reports_dir(tmp_path):
    """Where run_verify and run_audit have the playbooks write their reports."""
    return tmp_path / "reports"


def load_reports(tmp_path, name="verify"):
    """The reports a run wrote: (JSON document, JUnit XML root element, HTML text)."""
    directory = reports_dir(tmp_path)
    document = json.loads((directory / (name + ".json")).read_text())
    junit = ET.parse(str(directory / (name + ".junit.xml"))).getroot()
    page = (directory / (name + ".html")).read_text()
    return document, junit, page


def run_verify(tmp_path, port, group, position_vars, pacs_vars=None, playbook=PLAYBOOK, extra_vars=None,
               extra_groups=None):
    """Run verify.yml (or ``playbook``) against one PACS on ``port`` from a position in
    ``group`` (modalities, outsiders, or probes with dicomsec_probe_position in
    ``position_vars``); ``extra_groups`` adds groups (a gateway in dicom_gateways); return
    (rc, output, {task name: that position's result})."""
    pacs = {
        "dicomsec_dicom_address": LOOPBACK,
        "dicomsec_dicom_tls": True,
        "pacs_identity_aet": "ANY-SCP",
        "pacs_identity_dicom_port": port,
        "pacs_identity_modalities": [
            {"name": "ct-1", "aet": REGISTERED_AE, "host": LOOPBACK, "allow": ["echo", "store"]}
        ],
    }
    pacs.update(pacs_vars or {})
    position = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    position.update(position_vars)
    inventory = {"all": {
        # The journal check reads the PACS host's journal, which a loopback PACS does not
        # have: the tests that want it turn it on.
        "vars": dict({"dicomsec_report_dir": str(reports_dir(tmp_path)), "dicomsec_verify_audit_log": False},
                     **(extra_vars or {})),
        "children": {
            "pacs": {"hosts": {PACS: pacs}},
            group: {"hosts": {POSITIONS[group]: position}},
            **(extra_groups or {}),
        },
    }}
    inventory_file = tmp_path / "inventory.json"
    inventory_file.write_text(json.dumps(inventory))
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_PATH,
        ANSIBLE_STDOUT_CALLBACK="json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
    )
    proc = subprocess.run(
        [ansible_bin("ansible-playbook"), "-i", str(inventory_file), str(playbook)],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=180, check=False,
    )
    output = proc.stdout + proc.stderr
    tasks = {}
    try:
        plays = json.loads(proc.stdout[proc.stdout.index("{"):])["plays"]
    except ValueError:
        raise AssertionError("ansible-playbook gave no JSON result:\n" + output) from None
    for play in plays:
        for task in play["tasks"]:
            # The position's tasks, and the report play's on the controller.
            for host in (POSITIONS[group], "localhost"):
                if host in task["hosts"]:
                    tasks[task["task"]["name"]] = task["hosts"][host]
    return proc.returncode, output, tasks
