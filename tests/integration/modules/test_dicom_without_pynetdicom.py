# -*- coding: utf-8 -*-
"""Both modules speak DICOM through pynetdicom: on a Python that cannot import it they fail
by the library's name, before any traffic, instead of with a traceback."""

from __future__ import annotations

import sys

import pytest

from dicom_lab import LOOPBACK, run_module

# Loaded by the interpreter below before the module runs: any import of pynetdicom or
# pydicom fails there, exactly as on a host that does not have them.
BLOCKER = r"""
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pynetdicom", "pydicom"):
            raise ImportError("No module named %r" % name)
        return None

sys.meta_path.insert(0, Block())
"""


@pytest.fixture(scope="module")
def python_without_pynetdicom(tmp_path_factory):
    root = tmp_path_factory.mktemp("no-pynetdicom")
    (root / "sitecustomize.py").write_text(BLOCKER)
    wrapper = root / "python"
    wrapper.write_text('#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" "$@"\n' % (root, sys.executable))
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.mark.parametrize("module,args", [
    ("dicom_association", {}),
    ("dicom_audit", {"endpoints": [{"host": LOOPBACK}]}),
])
def test_missing_pynetdicom_is_reported_by_name_before_any_traffic(hostile, python_without_pynetdicom, module, args):
    before = sum(hostile.connections.values())
    args = dict(args)
    if module == "dicom_association":
        args.update(host=LOOPBACK, port=hostile.ports["close"])
    else:
        args["endpoints"][0]["port"] = hostile.ports["close"]
    rc, out, res = run_module(module, args, interpreter=python_without_pynetdicom)
    assert rc != 0, out
    assert "required Python library (pynetdicom)" in res["msg"]
    assert sum(hostile.connections.values()) == before


def test_the_same_module_runs_where_pynetdicom_is_installed(hostile):
    # The twin: with the library present the module runs and reaches the server.
    before = hostile.connections["close"]
    rc, out, res = run_module("dicom_association", dict(host=LOOPBACK, port=hostile.ports["close"], timeout=2))
    assert rc == 0, out
    assert res["outcome"] == "aborted"
    assert hostile.connections["close"] == before + 1
