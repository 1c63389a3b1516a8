# -*- coding: utf-8 -*-
"""The modules' documentation renders and every example is a valid call of the module."""

from __future__ import annotations

import importlib
import os
import subprocess

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from dicom_lab import COLLECTIONS_PATH, REPO, ansible_bin, module_argument_spec

MODULES = ["dicom_association", "dicom_audit"]


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_renders_the_module_with_examples(module):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_PATH, ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(
        [ansible_bin("ansible-doc"), "dicomsec.hardening." + module],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "EXAMPLES" in proc.stdout
    assert "RETURN VALUES" in proc.stdout
    assert "identity" in proc.stdout and "passcode" in proc.stdout


@pytest.mark.parametrize("module", MODULES)
def test_every_example_passes_the_argument_spec(module):
    mod, spec = module_argument_spec(module)
    tasks = yaml.safe_load(mod.EXAMPLES)
    calls = [t["dicomsec.hardening." + module] for t in tasks if "dicomsec.hardening." + module in t]
    assert calls
    for args in calls:
        # Jinja expressions stand for secrets from a vault: give them a value.
        args = yaml.safe_load(yaml.safe_dump(args).replace("'{{ vault_ct01_passcode }}'", "secret"))
        result = ArgumentSpecValidator(spec).validate(args)
        assert result.error_messages == [], args


def _loopback_only(value):
    """True when every ``host`` in a task's arguments is 127.0.0.1."""
    hosts = []

    def walk(node):
        if isinstance(node, dict):
            for key, item in node.items():
                if key == "host":
                    hosts.append(item)
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(value)
    return all(h == "127.0.0.1" for h in hosts)


def _port_free(port):
    import socket

    with socket.socket() as sock:
        # Servers reuse addresses, so connections of an earlier run in TIME_WAIT are fine.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def example_servers(tmp_path):
    """What the examples talk to: a hardened Orthanc on its default port 4242 that knows
    CT01, and an SCP called PACS on 11112 that requires user identity."""
    from dicom_lab import ScpPolicy, _start_orthanc, _stop, start_scp

    if not (_port_free(4242) and _port_free(11112) and _port_free(11113)):
        pytest.skip("the examples' ports 4242/11112/11113 are in use on this host")
    proc, log, _port = _start_orthanc(tmp_path, hardened=True, dicom_port=4242)
    scp = start_scp(ScpPolicy.IDENTITY, ae_title="PACS", port=11112)
    try:
        yield
    finally:
        scp.shutdown()
        _stop(proc, graceful=False)
        log.close()


def test_loopback_examples_run_as_written(example_servers, tmp_path):
    tasks = []
    for module in MODULES:
        mod = importlib.import_module("ansible_collections.dicomsec.hardening.plugins.modules." + module)
        example_tasks = yaml.safe_load(mod.EXAMPLES)
        # Run every task of an example that only talks to loopback, with the tasks that
        # use its registered result.
        registered_elsewhere = set()
        for task in example_tasks:
            if _loopback_only(task):
                dumped = yaml.safe_dump(task)
                if not any(name in dumped for name in registered_elsewhere):
                    tasks.append(task)
            elif "register" in task:
                registered_elsewhere.add(task["register"])
    assert len(tasks) >= 7
    playbook = tmp_path / "examples.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}], sort_keys=False))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_PATH, ANSIBLE_NOCOLOR="1",
               ANSIBLE_PYTHON_INTERPRETER=__import__("sys").executable, ANSIBLE_LOCALHOST_WARNING="0")
    proc = subprocess.run(
        [ansible_bin("ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "failed=0" in proc.stdout
