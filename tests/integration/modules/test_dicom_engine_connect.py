# -*- coding: utf-8 -*-
"""The connect path: name lookups that fail, hang or cannot be made, source addresses of the
wrong family, and more probes at once than the process may open files."""

from __future__ import annotations

import socket

import pytest
from dicom_lab import LOOPBACK, free_port, handshake_never_completes

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_probe as dp


def _probe(port, **extra):
    return dp.probe(dict(dict(host=LOOPBACK, port=port, called_ae="ANY-SCP", calling_ae="CT01", timeout=5), **extra))


def test_failed_name_lookup_is_refused_with_the_reason(monkeypatch):
    # The lookup itself is stubbed: a real one for a missing name would leave this machine.
    def no_such_name(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(dp.socket, "getaddrinfo", no_such_name)
    result = _probe(104, host="pacs.example.invalid")
    assert result["outcome"] == "refused"
    assert "host name lookup failed" in result["detail"]


def test_slow_name_lookup_costs_at_most_the_timeout(monkeypatch):
    import time

    def hanging_lookup(*args, **kwargs):
        time.sleep(3)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(dp.socket, "getaddrinfo", hanging_lookup)
    start = time.monotonic()
    result = _probe(104, host="slow-dns.example.invalid", timeout=0.3)
    assert time.monotonic() - start < 2
    assert result["outcome"] == "timeout"


def test_unusable_host_name_is_refused_at_once_every_time():
    # "a..b" fails IDNA encoding inside getaddrinfo (UnicodeError, not OSError): no
    # query leaves the machine, and the lookup must neither hang nor stay broken.
    import time

    for dummy in range(2):
        start = time.monotonic()
        result = _probe(104, host="a..b", timeout=5)
        assert time.monotonic() - start < 2
        assert result["outcome"] == "refused"
        assert "not a usable host name" in result["detail"]


def test_bind_address_of_the_other_family_is_refused_with_the_reason():
    result = _probe(free_port(), host="::1", bind_address="127.0.0.1")
    assert result["outcome"] == "refused"
    assert result["detail"] == "bind_address 127.0.0.1 is IPv4, and ::1 has no IPv4 address"


CAPPED_CHILD = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_probe as dp
port = int(sys.argv[2])
results = dp.probe_many([dict(host="127.0.0.1", port=port, called_ae="ANY-SCP", calling_ae="CT01",
                              timeout=0.5, dimse="none") for dummy in range(300)], concurrency=300)
print(json.dumps(sorted(set(r["outcome"] for r in results))))
"""


def test_concurrency_beyond_the_open_file_limit_is_capped_not_misreported(hostile):
    # 300 probes at once in a process allowed 128 descriptors: uncapped, about 200 of
    # them would fail socket() with EMFILE and report a silent server as refused.
    import json
    import subprocess
    import sys

    from dicom_lab import COLLECTIONS_PATH

    proc = subprocess.run(
        [sys.executable, "-c", CAPPED_CHILD, COLLECTIONS_PATH, str(hostile.ports["silence"])],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["timeout"]


# --- the two ways a deadline is kept --------------------------------------------------------


@pytest.fixture(params=["asyncio.timeout", "asyncio.wait_for"])
def deadline_path(request, monkeypatch):
    """Run a test with the deadlines Python 3.11 gives (asyncio.timeout) and with the ones
    older Pythons fall back to (asyncio.wait_for)."""
    if request.param == "asyncio.wait_for":
        monkeypatch.setattr(dp, "_TIMEOUT", None)
    else:
        assert dp._TIMEOUT is not None, "this Python has no asyncio.timeout"
    return request.param


def test_an_unanswered_request_times_out_on_either_deadline_path(deadline_path):
    # The kernel completes the handshake for a listener that never accepts: the request is
    # sent and nothing answers it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(8)
        result = _probe(listener.getsockname()[1], timeout=0.5, connect_timeout=3)
    assert result["outcome"] == "timeout", result
    assert result["connected"] is True
    assert result["detail"] == "no answer within 0.5s (waiting during association)"


def test_a_handshake_that_never_completes_is_a_connect_timeout_on_either_deadline_path(deadline_path):
    with handshake_never_completes() as port:
        result = _probe(port, timeout=30, connect_timeout=0.5)
    assert result["outcome"] == "timeout", result
    assert not result.get("connected")
    assert result["detail"] == "no TCP connection within 0.5s (connect timeout)"
