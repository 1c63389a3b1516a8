# -*- coding: utf-8 -*-
"""Fixtures for the verification module tests; the servers live in dicom_lab.py so that
tests can import its helpers without clashing with other conftest modules."""

from __future__ import annotations

# pylint: disable=unused-import
from dicom_lab import (  # noqa: F401  (fixtures are found by name)
    hostile,
    orthanc_hardened,
    orthanc_hardened_server,
    orthanc_open,
    pki,
    scp_factory,
    storescp,
    storescp_with_dir,
    tls_scp_factory,
)
