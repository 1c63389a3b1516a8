# -*- coding: utf-8 -*-
"""The association engine and the audit need no DICOM library at run time: the same audit
gives the same findings in a Python where pynetdicom and pydicom cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dicom_lab import COLLECTIONS_PATH, LOOPBACK, USERS, ScpPolicy, run_module

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_audit as da

PASSCODE_IDENTITY = dict(type="username_passcode", username="ct01", passcode=USERS["ct01"])

# Runs in a child Python: any import of pynetdicom, pydicom or numpy fails there, exactly as
# on a host that does not have them.
BLOCKED_CHILD = r"""
import json, sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pynetdicom", "pydicom", "numpy"):
            raise ImportError("blocked for this test: " + name)
        return None

sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
try:
    import pynetdicom  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("pynetdicom was importable")
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_audit, dicom_probe
config = json.loads(sys.argv[2])
reports, summary = dicom_audit.audit(config)
probe = dicom_probe.probe(dict(config["endpoints"][0], called_ae="ANY-SCP", calling_ae="CT01", timeout=5, dimse="find"))
print(json.dumps({"reports": reports, "probe": probe}))
"""


def _verdicts(reports):
    return {r["name"]: {f["id"]: (f["passed"], f["evidence"]) for f in r["findings"]} for r in reports}


@pytest.fixture(scope="module")
def endpoints(scp_factory):
    return [
        dict(name="open", host=LOOPBACK, port=scp_factory(ScpPolicy.OPEN), called_ae="ANY-SCP"),
        dict(name="whitelist", host=LOOPBACK, port=scp_factory(ScpPolicy.CALLING_WHITELIST), called_ae="ANY-SCP"),
        dict(name="identity", host=LOOPBACK, port=scp_factory(ScpPolicy.IDENTITY), called_ae="ANY-SCP"),
        dict(name="strict", host=LOOPBACK, port=scp_factory(ScpPolicy.STRICT_AE, ae_title="PACS01"), called_ae="PACS01"),
    ]


def test_audit_without_pynetdicom_gives_the_same_findings(endpoints):
    config = dict(endpoints=endpoints, calling_ae="CT01", identity=PASSCODE_IDENTITY, timeout=5, concurrency=16)
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_CHILD, COLLECTIONS_PATH, json.dumps(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    child = json.loads(proc.stdout)
    reports, dummy = da.audit(config)
    # Random AE titles differ between runs; pass/fail and the evidence's shape do not.
    child_verdicts = {n: {c: v[0] for c, v in f.items()} for n, f in _verdicts(child["reports"]).items()}
    here_verdicts = {n: {c: v[0] for c, v in f.items()} for n, f in _verdicts(reports).items()}
    assert child_verdicts == here_verdicts
    # The findings that prove the DIMSE path: a C-FIND answered, a C-ECHO with status 0.
    assert child_verdicts["open"]["cfind_exposure"] is False
    assert child_verdicts["open"]["authorized"] is True
    assert child_verdicts["whitelist"]["any_ae"] is True
    assert child_verdicts["identity"]["wrong_passcode"] is True
    assert child_verdicts["identity"]["no_identity"] is True
    assert child_verdicts["strict"]["called_ae_guess"] is True


def test_probe_without_pynetdicom_counts_find_matches(endpoints):
    config = dict(endpoints=endpoints[:1], calling_ae="CT01", timeout=5, concurrency=4, checks=["any_ae"])
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_CHILD, COLLECTIONS_PATH, json.dumps(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    probe = json.loads(proc.stdout)["probe"]
    assert probe["outcome"] == "accepted"
    assert probe["dimse_status"] == 0
    assert probe["matches"] == 2


def test_audit_module_runs_on_a_python_without_pynetdicom(endpoints):
    python = "/usr/bin/python3"
    if not os.path.exists(python) or subprocess.run([python, "-c", "import pynetdicom"], capture_output=True, check=False).returncode == 0:
        pytest.skip("needs a Python without pynetdicom")
    rc, out, res = run_module(
        "dicom_audit",
        dict(endpoints=endpoints[:2], calling_ae="CT01", fail_on="never"),
        interpreter=python,
    )
    assert rc == 0, out
    findings = {r["name"]: {f["id"]: f["passed"] for f in r["findings"]} for r in res["endpoints"]}
    assert findings["open"]["any_ae"] is False
    assert findings["whitelist"]["any_ae"] is True
    assert findings["open"]["authorized"] is True
