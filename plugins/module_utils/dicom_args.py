# -*- coding: utf-8 -*-
# Copyright: contributors to the dicomsec.hardening collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Argument specs shared by the DICOM verification modules (kept in step with the
``dicomsec.hardening.dicom`` documentation fragment)."""

from __future__ import annotations

__metaclass__ = type

from ansible_collections.dicomsec.hardening.plugins.module_utils.dicom_probe import TLS_VERSION_NAMES

# The versions the engine can offer, lowest first.
TLS_VERSION_CHOICES = list(TLS_VERSION_NAMES)
IDENTITY_TYPE_CHOICES = ["username", "username_passcode", "kerberos", "saml", "jwt"]


def tls_spec():
    return dict(
        type="dict",
        options=dict(
            enabled=dict(type="bool", default=False),
            ca_file=dict(type="path"),
            cert_file=dict(type="path"),
            key_file=dict(type="path"),
            key_password=dict(type="str", no_log=True),
            server_name=dict(type="str"),
            verify_peer=dict(type="bool", default=True),
            check_hostname=dict(type="bool", default=True),
            min_version=dict(type="str", choices=TLS_VERSION_CHOICES, default="TLSv1.2"),
            max_version=dict(type="str", choices=TLS_VERSION_CHOICES),
        ),
    )


def identity_spec():
    return dict(
        type="dict",
        options=dict(
            type=dict(type="str", choices=IDENTITY_TYPE_CHOICES),
            username=dict(type="str"),
            passcode=dict(type="str", no_log=True),
            token=dict(type="str", no_log=True),
            positive_response_requested=dict(type="bool", default=False),
        ),
    )
