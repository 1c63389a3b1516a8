# -*- coding: utf-8 -*-
"""Hostile input for the association gate: thousands of mutated A-ASSOCIATE-RQs.

Seeds are valid requests encoded by pynetdicom (through the collection's request builder),
each carrying a credential the gate refuses, so that a mutation the parser still accepts is
rejected and one it cannot read is closed: none may reach the PACS. Each connection must end
within the preread timeout, no worker may die, and an authorized association works after.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from gate_lab import CALLED_AE, PASSCODES


from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_pdu, dicom_probe

MUTATIONS = 5200
PREREAD_TIMEOUT = 3  # the conftest listeners' timeouts.preread
RJ_HEADER = b"\x03\x00\x00\x00\x00\x04\x00"


def _seeds(idp):
    def rq(calling="CT01", identity=None, positive=False, dimse="store"):
        return dicom_pdu.build_associate_rq(CALLED_AE, calling, dimse=dimse, identity=identity, positive_response=positive)

    seeds = [
        rq(identity={"type": "username_passcode", "username": "ct01tech", "passcode": "wrong-passcode"}),
        rq(identity={"type": "username_passcode", "username": "nobody", "passcode": PASSCODES["ct01tech"]},
           positive=True),
        rq(identity={"type": "username", "username": "porter"}),
        rq(identity={"type": "jwt", "token": idp.token(key=idp.forger)}),
        rq(identity={"type": "jwt", "token": idp.token(alg="none")}),
        rq(),
        rq(calling="INTRUDER", identity={"type": "username_passcode", "username": "ct01tech",
                                         "passcode": PASSCODES["ct01tech"]}),
    ]
    return seeds


def _items(pdu):
    """Offsets of the variable items and of the sub-items of user information."""
    offsets, pos = [], 74
    while pos + 4 <= len(pdu):
        offsets.append(pos)
        length = struct.unpack(">H", pdu[pos + 2:pos + 4])[0]
        if pdu[pos] == 0x50:
            sub = pos + 4
            while sub + 4 <= pos + 4 + length:
                offsets.append(sub)
                sub += 4 + struct.unpack(">H", pdu[sub + 2:sub + 4])[0]
        pos += 4 + length
    return offsets


def _fix_pdu_length(pdu):
    return pdu[:2] + struct.pack(">I", len(pdu) - 6) + pdu[6:]


def _mutate(rng, seed):
    pdu = bytearray(seed)
    kind = rng.choice(("truncate", "pdu_length", "item_length", "duplicate_identity", "flip", "insert", "delete",
                       "ae_fields", "giant", "other_type", "garbage", "big_identity", "zero_items"))
    if kind == "truncate":
        pdu = pdu[:rng.randrange(1, len(pdu))]
    elif kind == "pdu_length":
        delta = rng.choice((-1, 1)) * rng.randrange(1, 4096)
        pdu[2:6] = struct.pack(">I", max(0, len(pdu) - 6 + delta))
    elif kind == "item_length":
        at = rng.choice(_items(bytes(pdu)))
        pdu[at + 2:at + 4] = struct.pack(">H", rng.choice((0, 1, 0xFFFF, rng.randrange(0, 0x10000))))
    elif kind == "duplicate_identity":
        identity = dicom_pdu.build_associate_rq(CALLED_AE, "CT01", identity={
            "type": "username_passcode", "username": "ct01tech", "passcode": PASSCODES["ct01tech"]})
        sub = [o for o in _items(identity) if identity[o] == 0x58][0]
        item = identity[sub:sub + 4 + struct.unpack(">H", identity[sub + 2:sub + 4])[0]]
        user = [o for o in _items(bytes(pdu)) if pdu[o] == 0x50][0]
        ulen = struct.unpack(">H", pdu[user + 2:user + 4])[0]
        copies = item * rng.choice((1, 2))
        pdu[user + 4 + ulen:user + 4 + ulen] = copies
        pdu[user + 2:user + 4] = struct.pack(">H", ulen + len(copies))
        pdu = bytearray(_fix_pdu_length(bytes(pdu)))
        if not [o for o in _items(seed) if seed[o] == 0x58]:
            # A seed without identity now holds exactly the right credential twice: still a duplicate?
            pdu[user + 4 + ulen:user + 4 + ulen] = item
            pdu[user + 2:user + 4] = struct.pack(">H", ulen + len(copies) + len(item))
            pdu = bytearray(_fix_pdu_length(bytes(pdu)))
    elif kind == "flip":
        for dummy in range(rng.randrange(1, 6)):
            at = rng.randrange(len(pdu))
            pdu[at] ^= 1 << rng.randrange(8)
    elif kind == "insert":
        at = rng.randrange(len(pdu))
        pdu[at:at] = rng.randbytes(rng.randrange(1, 64))
        if rng.random() < 0.5:
            pdu = bytearray(_fix_pdu_length(bytes(pdu)))
    elif kind == "delete":
        at = rng.randrange(6, len(pdu))
        del pdu[at:at + rng.randrange(1, 64)]
        if rng.random() < 0.5:
            pdu = bytearray(_fix_pdu_length(bytes(pdu)))
    elif kind == "ae_fields":
        value = rng.choice((b" " * 16, b"Z" * 16, b"\x00" * 16, b"CT01\\" + b" " * 11, rng.randbytes(16)))
        at = rng.choice((10, 26))
        pdu[at:at + 16] = value
    elif kind == "giant":
        pdu = bytearray(b"\x01\x00" + struct.pack(">I", 1 << 30) + bytes(pdu[6:6 + rng.randrange(0, 512)]))
    elif kind == "other_type":
        if rng.random() < 0.5:
            pdu[0] = rng.choice((0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x00, 0xFF))
        else:
            pdu = bytearray(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00") + pdu
    elif kind == "garbage":
        pdu = bytearray(rng.randbytes(rng.randrange(1, 2048)))
    elif kind == "big_identity":
        big = dicom_pdu.build_associate_rq(CALLED_AE, "CT01", identity={
            "type": rng.choice(("username_passcode", "jwt")), "username": "u" * rng.choice((1, 300, 30000)),
            "passcode": "p" * rng.choice((1, 5000)), "token": "t" * rng.choice((1, 65000))})
        pdu = bytearray(big)
    elif kind == "zero_items":
        pdu = bytearray(_fix_pdu_length(bytes(pdu[:74])))
    return kind, bytes(pdu)


def _send(port, payload, pace=0.0):
    """Send, half-close, read to the end. Return (bytes received, seconds until closed)."""
    start = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=PREREAD_TIMEOUT + 5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if pace:
                # Between bytes, watch for the close, so the time measured is the gateway's.
                for byte in payload:
                    sock.sendall(bytes([byte]))
                    if select.select([sock], [], [], pace)[0]:
                        break
            else:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except OSError:
            pass
    return received, time.monotonic() - start


def test_five_thousand_mutated_requests_are_refused_or_closed_and_none_reaches_the_upstream(gateway):
    rng = random.Random(20240610)
    seeds = _seeds(gateway.idp)
    cases = [_mutate(rng, rng.choice(seeds)) for dummy in range(MUTATIONS)]
    assert len({kind for kind, dummy in cases}) == 13
    workers_before = gateway.nginx.worker_pids()
    # Only what this test provokes: the TLS tests' refusals log SSL errors of their own.
    log_start = len(gateway.nginx.error_log())
    gateway.upstream.clear()
    port = gateway.port("plain")

    # Slowloris alongside: one byte a second of a valid request, closed at the preread timeout.
    slow_results = []
    slow = [threading.Thread(target=lambda: slow_results.append(_send(port, seeds[0], pace=1.0)))
            for dummy in range(3)]
    for thread in slow:
        thread.start()

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda case: _send(port, case[1]), cases))
    for thread in slow:
        thread.join(PREREAD_TIMEOUT + 10)

    bad = []
    for (kind, payload), (answer, elapsed) in zip(cases, results):
        refused = answer == b"" or (len(answer) == 10 and answer.startswith(RJ_HEADER))
        if not refused or elapsed > PREREAD_TIMEOUT + 2:
            bad.append((kind, payload[:32].hex(), answer[:32].hex(), round(elapsed, 2)))
    assert not bad, "%d of %d answered other than RJ/close in time, e.g. %s" % (len(bad), len(cases), bad[:5])
    assert len(slow_results) == 3
    for answer, elapsed in slow_results:
        assert answer == b"" and elapsed <= PREREAD_TIMEOUT + 2, (answer, elapsed)

    time.sleep(0.3)
    assert gateway.upstream.associations == [] and bytes(gateway.upstream.raw) == b""
    errors = gateway.nginx.error_log()[log_start:]
    for sign in ("exited on signal", "js exception", "[alert]", "[emerg]", "[crit]", "worker process exited"):
        assert sign not in errors, sign
    assert gateway.nginx.worker_pids() == workers_before

    # And the gateway still serves the authorized.
    result = dicom_probe.probe({"host": "127.0.0.1", "port": port, "called_ae": CALLED_AE, "calling_ae": "CT01",
                                "timeout": 8, "dimse": "store", "identity": {
                                    "type": "username_passcode", "username": "ct01tech",
                                    "passcode": PASSCODES["ct01tech"]}})
    assert result["outcome"] == "accepted" and result["operation"]["succeeded"], result
