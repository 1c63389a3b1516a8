# -*- coding: utf-8 -*-
"""Fixtures for the playbook tests: dicom_lab's certificates, and TLS servers stopped by
their handle after each test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# dicom_lab (the verification modules' loopback lab) lives beside the module tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modules"))

from dicom_lab import Pki  # noqa: E402


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def servers():
    """Keep a started pynetdicom server for shutdown after the test; return its port."""
    started = []

    def keep(server):
        started.append(server)
        return server.server_address[1]

    yield keep
    for server in started:
        server.shutdown()
