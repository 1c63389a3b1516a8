# -*- coding: utf-8 -*-
"""dicom_report through ansible: the files, their mode, idempotence, check mode, diff, bad
input refused before anything is written, and the documentation."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import xml.etree.ElementTree as ET

import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from dicom_lab import COLLECTIONS_PATH, REPO, ansible_bin, module_argument_spec, run_module

RECORDS = [
    {
        "site": "hospital-a", "control": "ae_whitelist", "position": "ct-1", "role": "modality",
        "target": "pacs-1", "address": "127.0.0.1:4242",
        "request": {"calling_ae": "NOT-REGISTERED", "called_ae": "PACS", "dimse": "store", "tls": True},
        "expected": "rejected: calling-ae-not-recognized", "outcome": "accepted", "verdict": "fail",
        "evidence": "<script>alert(1)</script>", "time": "2025-01-01T12:00:00Z",
    },
    {
        "control": "authorized_path", "position": "ct-1", "target": "pacs-1", "verdict": "pass",
        "outcome": "accepted; C-ECHO success", "time": "2025-01-01T12:00:01Z",
    },
]


def report(tmp_path, *extra, **args):
    call = {"records": RECORDS, "dest": str(tmp_path / "out"), "name": "verify"}
    call.update(args)
    return run_module("dicom_report", call, *extra)


def test_the_three_reports_are_written_with_mode_0640_and_the_counts_returned(tmp_path):
    rc, out, result = report(tmp_path)
    assert rc == 0, out
    assert result["changed"] is True
    assert result["summary"]["total"] == 2 and result["summary"]["failed"] == 1 and result["summary"]["passed"] == 1
    assert result["summary"]["failing"][0].startswith("FAIL ae_whitelist: ct-1 (modality) -> pacs-1")
    out_dir = tmp_path / "out"
    assert stat.S_IMODE(out_dir.stat().st_mode) == 0o750
    assert sorted(p.name for p in out_dir.iterdir()) == ["verify.html", "verify.json", "verify.junit.xml"]
    for fmt, name in (("json", "verify.json"), ("junit", "verify.junit.xml"), ("html", "verify.html")):
        assert result["paths"][fmt] == str(out_dir / name)
        assert stat.S_IMODE((out_dir / name).stat().st_mode) == 0o640
    document = json.loads((out_dir / "verify.json").read_text())
    assert document["records"][1]["site"] == "default"
    assert ET.parse(str(out_dir / "verify.junit.xml")).getroot().get("failures") == "1"


def test_rewriting_the_same_records_changes_nothing_and_new_records_change_the_files(tmp_path):
    assert report(tmp_path)[0] == 0
    rc, out, again = report(tmp_path)
    assert rc == 0 and again["changed"] is False and again["changed_files"] == [], out
    newer = [dict(RECORDS[0], time="2025-01-02T00:00:00Z")] + RECORDS[1:]
    rc, out, changed = report(tmp_path, records=newer)
    assert rc == 0 and changed["changed"] is True and len(changed["changed_files"]) == 3, out


def test_check_mode_says_what_would_change_and_writes_nothing(tmp_path):
    rc, out, result = run_module(
        "dicom_report", {"records": RECORDS, "dest": str(tmp_path / "out")}, check=True
    )
    assert rc == 0, out
    assert result["changed"] is True and len(result["changed_files"]) == 3
    assert not (tmp_path / "out").exists()


def test_diff_shows_the_json_report(tmp_path):
    rc, out, result = report(tmp_path, "--diff")
    assert rc == 0, out
    diff = result["diff"]
    assert diff["before"] == "" and diff["before_header"].endswith("verify.json (absent)")
    assert json.loads(diff["after"])["summary"]["failed"] == 1


def test_only_the_formats_asked_for_are_written(tmp_path):
    rc, out, result = report(tmp_path, formats=["junit"])
    assert rc == 0, out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["verify.junit.xml"]
    assert list(result["paths"]) == ["junit"]


def test_a_record_without_a_verdict_is_refused_before_anything_is_written(tmp_path):
    bad = [dict(RECORDS[0], verdict="maybe")]
    rc, out, result = report(tmp_path, records=bad)
    assert rc != 0
    assert "verdict" in result["msg"] and "maybe" in result["msg"], out
    assert not (tmp_path / "out").exists()


def test_a_name_that_would_leave_the_directory_is_refused(tmp_path):
    rc, out, result = report(tmp_path, name="../escape")
    assert rc != 0
    assert "invalid parameters, nothing was written: name '../escape'" in result["msg"], out
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.json").exists()


def test_a_dest_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("not a directory")
    rc, out, result = report(tmp_path)
    assert rc != 0
    assert "exists and is not a directory" in result["msg"], out
    assert (tmp_path / "out").read_text() == "not a directory"


def test_ansible_doc_renders_the_module_with_examples():
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_PATH, ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(
        [ansible_bin("ansible-doc"), "dicomsec.hardening.dicom_report"],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "EXAMPLES" in proc.stdout and "RETURN VALUES" in proc.stdout and "withheld" in proc.stdout


def test_every_example_passes_the_argument_spec():
    mod, spec = module_argument_spec("dicom_report")
    calls = [t["dicomsec.hardening.dicom_report"] for t in yaml.safe_load(mod.EXAMPLES) if "dicomsec.hardening.dicom_report" in t]
    assert len(calls) == 2
    for args in calls:
        if isinstance(args["records"], str):
            args = dict(args, records=RECORDS)
        result = ArgumentSpecValidator(spec).validate(args)
        assert result.error_messages == [], args
