# -*- coding: utf-8 -*-
# Copyright: contributors to the dicomsec.hardening collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type


class ModuleDocFragment:
    # TLS and user identity options shared by dicom_association and dicom_audit.
    DOCUMENTATION = r"""
options:
  tls:
    description:
      - DICOM TLS (PS3.15 Annex B) settings for the connection.
      - Certificate and key files are read on the managed host and must exist before any traffic is sent.
    type: dict
    suboptions:
      enabled:
        description: Speak TLS instead of plain TCP.
        type: bool
        default: false
      ca_file:
        description:
          - PEM file with the certificate authorities that may sign the server's certificate.
          - Without it the system trust store is used.
        type: path
      cert_file:
        description: PEM client certificate to present; servers that require client certificates refuse the handshake without one.
        type: path
      key_file:
        description: PEM private key for O(tls.cert_file); omit when the key is inside O(tls.cert_file).
        type: path
      key_password:
        description: Password of an encrypted O(tls.key_file). Never logged or returned.
        type: str
      server_name:
        description: Name sent in SNI and checked against the server certificate. Defaults to the host.
        type: str
      verify_peer:
        description:
          - Verify the server's certificate chain.
          - Set to V(false) only to gather evidence from a server whose certificate is unknown; the outcome then proves nothing about who answered.
        type: bool
        default: true
      check_hostname:
        description: Check that the server certificate names O(tls.server_name) (or the host). Only applies when O(tls.verify_peer=true).
        type: bool
        default: true
      min_version:
        description:
          - Lowest TLS version offered.
          - V(TLSv1) and V(TLSv1.1) lower OpenSSL's security level for this connection only, so a test can offer them on purpose.
        type: str
        choices: [TLSv1, TLSv1.1, TLSv1.2, TLSv1.3]
        default: TLSv1.2
      max_version:
        description: Highest TLS version offered; set it with O(tls.min_version) to offer exactly one version.
        type: str
        choices: [TLSv1, TLSv1.1, TLSv1.2, TLSv1.3]
  identity:
    description:
      - User Identity Negotiation (PS3.7 D.3.3.7) sent in the A-ASSOCIATE-RQ.
      - Omit it, or omit O(identity.type), to send a request without user identity.
    type: dict
    suboptions:
      type:
        description:
          - Kind of identity. V(username) and V(username_passcode) need O(identity.username);
            V(username_passcode) also needs O(identity.passcode); V(kerberos), V(saml) and V(jwt) need O(identity.token).
        type: str
        choices: [username, username_passcode, kerberos, saml, jwt]
      username:
        description: User name (primary field).
        type: str
      passcode:
        description: Passcode (secondary field) for V(username_passcode). Never logged or returned.
        type: str
      token:
        description: Kerberos service ticket, SAML assertion or JSON Web Token (primary field). Never logged or returned.
        type: str
      positive_response_requested:
        description:
          - Ask the server to confirm the identity in its A-ASSOCIATE-AC.
          - A server that accepts the association without the confirmation ignored the identity.
        type: bool
        default: false
"""
