# -*- coding: utf-8 -*-
"""Start-up cost is part of an audit's wall time: a plain-TCP audit must not import asyncio
(about 30 ms) or ssl (about 7 ms), nor threading (host names only), and a TLS probe
must still load ssl when it needs it."""

from __future__ import annotations

import json
import subprocess
import sys

from dicom_lab import COLLECTIONS_PATH, LOOPBACK, ScpPolicy

CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_audit
config = json.loads(sys.argv[2])
reports, summary = dicom_audit.audit(config)
print(json.dumps({
    "findings": {f["id"]: f["passed"] for f in reports[0]["findings"]},
    "loaded": sorted(m for m in ("asyncio", "ssl", "threading", "concurrent.futures", "pynetdicom", "pydicom")
                     if m in sys.modules),
}))
"""


def _child(config):
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, COLLECTIONS_PATH, json.dumps(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_plain_audit_imports_neither_asyncio_nor_ssl_nor_threading(scp_factory):
    port = scp_factory(ScpPolicy.OPEN)
    out = _child(dict(endpoints=[dict(host=LOOPBACK, port=port, called_ae="ANY-SCP")], calling_ae="CT01", timeout=5))
    assert out["findings"]["any_ae"] is False  # the audit really ran and found the open endpoint
    assert out["findings"]["authorized"] is True
    assert out["loaded"] == []


def test_tls_audit_loads_ssl_when_an_endpoint_speaks_tls(tls_scp_factory, pki):
    port = tls_scp_factory()
    out = _child(dict(endpoints=[dict(host=LOOPBACK, port=port, called_ae="ANY-SCP", tls=True)],
                      calling_ae="CT01", tls=pki.client_tls(), timeout=5, checks=["plaintext_accepted", "authorized"]))
    assert out["findings"] == {"plaintext_accepted": True, "authorized": True}
    assert "ssl" in out["loaded"]
    assert "asyncio" not in out["loaded"]
