# -*- coding: utf-8 -*-
"""A real gateway (nginx_stream_proxy's templates and gate on loopback) whose decision log the
role's rsyslog configuration reads, and a real rsyslogd collector over mutual TLS."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# The gateway's loopback lab, shared with nginx_stream_proxy's own tests.
sys.path.insert(0, str(HERE.parent / "nginx_stream_proxy"))

from atna_lab import AtnaPki, Collector, Sender, remove, rsyslog_missing, sender_vars  # noqa: E402
from gate_lab import (  # noqa: E402
    PASSCODES, Nginx, RecordingScp, free_port, loopback_listener, make_root, nginx_missing, render_gateway)


class Gateway:
    def __init__(self, root):
        self.root = root
        self.log_file = root / "decisions.log"
        self.ports = {}
        self.nginx = None
        self.upstream = None

    def port(self, name):
        return self.ports[name]


@pytest.fixture(scope="session")
def gateway():
    missing = nginx_missing() + rsyslog_missing()
    if missing:
        pytest.skip("needs nginx with the stream and njs modules and rsyslog with rsyslog-gnutls: missing "
                    + ", ".join(missing))
    root = make_root()
    gw = Gateway(root)
    gw.upstream = RecordingScp()
    gw.ports = {"plain": free_port(), "optional_identity": free_port()}
    role_vars = {
        "nginx_stream_proxy_listeners": [
            loopback_listener("plain", gw.ports["plain"], gw.upstream.port, calling_aes=["CT01"]),
            loopback_listener("optional_identity", gw.ports["optional_identity"], gw.upstream.port, calling_aes=["CT01"],
                              identity={"required": False}),
        ],
        "nginx_stream_proxy_modalities": [{"ae": "CT01", "sources": ["127.0.0.1/32"]}],
        "nginx_stream_proxy_users": [{"name": "ct01tech", "passcode": PASSCODES["ct01tech"], "calling_aes": ["CT01"]}],
        "nginx_stream_proxy_pbkdf2_iterations": 10000,
        "nginx_stream_proxy_gate_dir": str(root / "gate"),
        "nginx_stream_proxy_run_dir": str(root / "run"),
        "nginx_stream_proxy_log_file": str(gw.log_file),
        "nginx_stream_proxy_syslog": {},
    }
    try:
        render_gateway(root, role_vars)
        (root / "run").chmod(0o755)
        gw.nginx = Nginx(root).start(gw.ports.values())
        yield gw
    finally:
        if gw.nginx is not None:
            gw.nginx.stop()
        gw.upstream.stop()
        remove(root)


@pytest.fixture(scope="session")
def atna_root(gateway):
    root = gateway.root / "atna"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def pki(atna_root):
    return AtnaPki(atna_root / "pki")


@pytest.fixture(scope="session")
def collector(atna_root, pki):
    coll = Collector(atna_root / "collector", pki).start()
    try:
        yield coll
    finally:
        coll.stop()


@pytest.fixture(scope="session")
def sender(atna_root, pki, collector, gateway):
    # The role's defaults but for paths, names and a short retry interval; freshStartTail as
    # the role sets it, so the lines written before rsyslog starts are not sent.
    snd = Sender(atna_root / "sender", sender_vars(atna_root / "sender", pki, collector, gateway.log_file))
    snd.start()
    try:
        yield snd
    finally:
        snd.stop()
