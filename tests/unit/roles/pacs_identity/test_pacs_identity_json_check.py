"""The `validate:` command guarding Orthanc's configuration files.

A rendered file that does not parse must never replace the running one; a
file with the ansible_managed `//` header and `//` comment lines, which
Orthanc reads, must pass.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROLE = Path(__file__).resolve().parents[4] / "roles" / "pacs_identity"
CHECK = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["pacs_identity__json_check"]


def check(tmp_path, text):
    path = tmp_path / "orthanc.json"
    path.write_text(text)
    argv = shlex.split(CHECK.replace("%s", shlex.quote(str(path))))
    return subprocess.run(argv, capture_output=True, text=True, check=False).returncode


GOOD = """//
// Ansible managed
//
{
  // The AE title this PACS answers to.
  "DicomAet": "LABPACS",
  "HttpsCACertificates": "http://not-a-comment//really",
  "DicomModalities": {}
}
"""


def test_commented_json_as_the_role_renders_it_passes(tmp_path):
    assert check(tmp_path, GOOD) == 0


@pytest.mark.parametrize("broken", [
    GOOD.replace('"LABPACS",', '"LABPACS"'),  # missing comma
    GOOD.replace('"DicomModalities": {}', '"DicomModalities": {},'),  # trailing comma
    GOOD[:-3],  # truncated
    "",  # empty
])
def test_broken_json_is_refused(tmp_path, broken):
    assert check(tmp_path, broken) != 0
