# -*- coding: utf-8 -*-
# Copyright: contributors to the dicomsec.hardening collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An association engine that classifies outcomes from the bytes on the wire.

One probe opens a TCP (optionally TLS) connection, sends an A-ASSOCIATE-RQ, reads exactly
one answer PDU and names what happened: ``accepted``, ``rejected``, ``aborted``,
``refused``, ``timeout`` or ``tls_failed``.  If the association was accepted it may run a
C-ECHO or a count-only C-FIND, and then releases.

Why not pynetdicom's Association: under heavy concurrency it has been seen to report an
A-ASSOCIATE-RJ as an abort, because its state machine can see the peer's close before it
has parsed the reject.  Here the answer is read into a buffer that a close cannot discard,
and the outcome is decided from the PDU type byte.  The engine is asyncio-based, so
hundreds of probes share one thread, and every probe has a hard deadline, so a silent,
trickling or giant-talking peer costs at most the timeout.
"""

from __future__ import annotations

__metaclass__ = type

import asyncio
import errno
import ipaddress
import os
import socket
import ssl
import time
import warnings

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_pdu as pdu

OUTCOMES = ("accepted", "rejected", "aborted", "refused", "timeout", "tls_failed")
DIMSE_CHOICES = ("echo", "find", "none")
TLS_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
# Stop counting C-FIND matches here and cancel: the count is evidence of exposure, and a
# verifier must not pull a whole archive's index.
MAX_FIND_MATCHES = 1000
RECV_SIZE = 65536


class _Closed(Exception):
    """The peer closed or reset the connection; ``error`` is the transport's exception."""

    def __init__(self, error=None):
        Exception.__init__(self, str(error) if error else "connection closed by peer")
        self.error = error


class _PduReader:
    """Buffers everything received and remembers a close separately.

    asyncio's StreamReader raises a pending connection error before returning data that is
    already buffered; a server that sends an A-ASSOCIATE-RJ and resets at once would then
    look like an abort.  Readers here always hand out buffered bytes first.
    """

    def __init__(self):
        self.buffer = bytearray()
        self.closed = False
        self.error = None
        self._waiter = None

    def _wake(self):
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read_exactly(self, count):
        while len(self.buffer) < count:
            if self.closed:
                raise _Closed(self.error)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    async def read_pdu(self, max_length):
        """Read one PDU; raise ProtocolError before reading a body longer than max_length."""
        header = await self.read_exactly(6)
        pdu_type, length = pdu.parse_header(header)
        if pdu_type not in pdu.PDU_NAMES:
            raise pdu.ProtocolError("peer sent %s" % pdu.describe_pdu_type(pdu_type))
        if length > max_length:
            raise pdu.ProtocolError(
                "%s declares %d bytes, more than the %d accepted; not read"
                % (pdu.PDU_NAMES[pdu_type], length, max_length)
            )
        body = await self.read_exactly(length)
        return pdu_type, header + body


class _PduProtocol(asyncio.Protocol, _PduReader):
    """asyncio transport based connection: used for TLS and for host names."""

    def __init__(self):
        _PduReader.__init__(self)
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        self._wake()

    def eof_received(self):
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc):
        self.closed = True
        self.error = exc
        self._wake()

    def write(self, data):
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self):
        if self.transport is not None:
            self.transport.abort()


class _RawConnection(_PduReader):
    """A plain TCP connection driven by reader/writer callbacks on a non-blocking socket.

    An audit opens thousands of short associations; asyncio's transports cost about twice
    the CPU of this per connection, and the association PDUs are small enough that a send
    almost never blocks (the rare partial send is queued and finished by a writer callback).
    """

    def __init__(self, loop, sock):
        _PduReader.__init__(self)
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self._pending = b""
        self._writer = False
        loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self):
        try:
            # 64 KiB: a larger buffer is allocated with mmap and freed again on every call,
            # which costs more than an association's whole answer on loopback.
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not data:
            self._lost(None)
            return
        self.buffer += data
        self._wake()

    def _lost(self, exc):
        self.closed = True
        self.error = exc
        self.loop.remove_reader(self.fd)
        self._wake()

    def write(self, data):
        if self.closed or self.sock is None:
            return
        if self._pending:
            self._pending += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return  # the reader sees the reset and reports it
        if sent < len(data):
            self._pending = data[sent:]
            self._writer = True
            self.loop.add_writer(self.fd, self._on_writable)

    def _on_writable(self):
        try:
            sent = self.sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            sent = len(self._pending)
        self._pending = self._pending[sent:]
        if not self._pending:
            self._writer = False
            self.loop.remove_writer(self.fd)

    def abort(self):
        if self.sock is None:
            return
        self.loop.remove_reader(self.fd)
        if self._writer:
            self.loop.remove_writer(self.fd)
        self.sock.close()
        self.sock = None


_FAMILIES = {}


def _numeric_family(host):
    """Return the address family of a numeric IP address, or None for a host name."""
    if host not in _FAMILIES:
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        except ValueError:
            family = None
        _FAMILIES[host] = family
    return _FAMILIES[host]


def tls_options_error(tls):
    """Return why TLS options cannot work, or None.  Runs before any traffic."""
    if not tls or not tls.get("enabled"):
        return None
    for key in ("ca_file", "cert_file", "key_file"):
        path = tls.get(key)
        if path and not os.path.isfile(path):
            return "tls.%s %s does not exist or is not a file" % (key, path)
        if path and not os.access(path, os.R_OK):
            return "tls.%s %s is not readable" % (key, path)
    if tls.get("key_file") and not tls.get("cert_file"):
        return "tls.key_file needs tls.cert_file"
    for key in ("min_version", "max_version"):
        if tls.get(key) and tls[key] not in TLS_VERSIONS:
            return "tls.%s must be one of %s" % (key, ", ".join(TLS_VERSIONS))
    if tls.get("min_version") and tls.get("max_version"):
        if TLS_VERSIONS[tls["min_version"]] > TLS_VERSIONS[tls["max_version"]]:
            return "tls.min_version is above tls.max_version"
    try:
        make_ssl_context(tls)
    except (ssl.SSLError, OSError, ValueError) as exc:
        return "TLS settings are unusable: %s" % exc
    return None


def make_ssl_context(tls):
    """Build the client SSLContext for a ``tls`` options dict."""
    with warnings.catch_warnings():
        # Offering TLS 1.0/1.1 is deliberate here (to prove a server refuses them).
        warnings.simplefilter("ignore", DeprecationWarning)
        return _make_ssl_context(tls)


def _make_ssl_context(tls):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    min_version = tls.get("min_version") or "TLSv1.2"
    max_version = tls.get("max_version")
    if TLS_VERSIONS[min_version] < ssl.TLSVersion.TLSv1_2 or (
        max_version and TLS_VERSIONS[max_version] < ssl.TLSVersion.TLSv1_2
    ):
        # OpenSSL 3 refuses TLS 1.0/1.1 at its default security level; a probe that offers
        # them on purpose (to prove a server refuses them) has to lower it.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = TLS_VERSIONS[min_version]
    if max_version:
        context.maximum_version = TLS_VERSIONS[max_version]
    if tls.get("verify_peer", True):
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = bool(tls.get("check_hostname", True))
        if tls.get("ca_file"):
            context.load_verify_locations(cafile=tls["ca_file"])
        else:
            context.load_default_certs()
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.get("cert_file"):
        context.load_cert_chain(
            tls["cert_file"], tls.get("key_file") or None, password=tls.get("key_password") or None
        )
    return context


def bind_address_error(address):
    """Return why ``address`` cannot be a local source address, or None."""
    family = _numeric_family(address)
    if family is None:
        return "bind_address %s must be an IP address" % address
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((address, 0))
    except OSError as exc:
        return "bind_address %s is not usable on this host: %s" % (address, exc.strerror or exc)
    finally:
        sock.close()
    return None


def validate_request(req):
    """Return a list of errors in a probe request dict; empty when it may be sent."""
    errors = []
    if not req.get("host"):
        errors.append("host is required")
    for err in (
        pdu.port_error(req.get("port")),
        pdu.ae_title_error(req.get("called_ae"), "called_ae"),
        pdu.ae_title_error(req.get("calling_ae"), "calling_ae"),
        pdu.identity_error(req.get("identity")),
        tls_options_error(req.get("tls")),
    ):
        if err:
            errors.append(err)
    if req.get("bind_address"):
        err = bind_address_error(req["bind_address"])
        if err:
            errors.append(err)
    timeout = req.get("timeout", 10)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        errors.append("timeout must be a positive number of seconds")
    if req.get("dimse", "echo") not in DIMSE_CHOICES:
        errors.append("dimse must be one of %s" % ", ".join(DIMSE_CHOICES))
    return errors


def _peer_subject(ssl_object):
    """Return the peer certificate's subject as an RFC 4514 string, or None."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        from cryptography import x509

        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except Exception:  # cryptography missing or certificate unparsable: fall back
        pass
    cert = ssl_object.getpeercert()
    if cert and cert.get("subject"):
        return ",".join("%s=%s" % pair for rdn in reversed(cert["subject"]) for pair in rdn)
    return None


def _new_result(req):
    return {
        "outcome": None,
        "host": req["host"],
        "port": req["port"],
        "called_ae": req["called_ae"],
        "calling_ae": req["calling_ae"],
        "reject": None,
        "abort": None,
        "identity_response": None,
        "tls": None,
        "dimse": req.get("dimse", "echo"),
        "dimse_status": None,
        "dimse_status_category": None,
        "matches": None,
        "latency_ms": None,
        "elapsed_ms": None,
        "detail": None,
        "released": False,
    }


class Probe:
    """One association attempt, described by a request dict.

    Keys: host, port, called_ae, calling_ae, timeout, bind_address, tls (dict or None),
    identity (dict or None), dimse (echo/find/none), ssl_context (optional prebuilt),
    associate_rq (optional prebuilt request bytes, for many probes with the same request).
    """

    def __init__(self, req):
        self.req = req
        self.result = _new_result(req)
        self.proto = None
        self.phase = "connect"
        self.tls_used = bool(req.get("tls") and req["tls"].get("enabled"))
        self.ended = False  # an A-ABORT was sent or received: nothing left to release

    async def run(self):
        start = time.perf_counter()
        self._start = start
        try:
            timeout = self.req.get("timeout", 10)
            if hasattr(asyncio, "timeout"):
                # Python 3.11+: cancels the probe in place; wait_for adds a task per probe.
                async with asyncio.timeout(timeout):
                    await self._run()
            else:  # pragma: no cover - older controllers and managed hosts
                await asyncio.wait_for(self._run(), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            self._on_timeout()
        except Exception as exc:  # never let one hostile peer take the whole run down
            if self.result["outcome"] is None:
                self.result["outcome"] = "aborted"
                self.result["detail"] = "unexpected error during %s: %s" % (self.phase, exc)
            elif not self.result["detail"]:
                self.result["detail"] = "error after the association answer: %s" % exc
        finally:
            if self.proto is not None:
                self.proto.abort()
        self.result["elapsed_ms"] = round((time.perf_counter() - start) * 1000.0, 3)
        return self.result

    def _on_timeout(self):
        timeout = self.req.get("timeout", 10)
        if self.result["outcome"] is None:
            self.result["outcome"] = "timeout"
            self.result["detail"] = "no answer within %ss (waiting during %s)" % (timeout, self.phase)
        else:
            # The association answer arrived; only what came after it ran out of time.
            note = "timed out after the association answer, during %s" % self.phase
            detail = self.result["detail"]
            self.result["detail"] = "%s; %s" % (detail, note) if detail else note

    async def _connect(self, first):
        """Connect; on a plain TCP connection also send ``first`` (the request) at once.

        Returns the connection, or None when the outcome is already decided.
        """
        req = self.req
        self.phase = "connect"
        try:
            if not self.tls_used and _numeric_family(req["host"]) is not None:
                return await self._connect_raw(first)
            return await self._connect_transport()
        except ssl.SSLError as exc:
            return self._finish("tls_failed", "TLS handshake failed: %s" % _ssl_reason(exc))
        except ConnectionRefusedError:
            return self._finish("refused", "connection refused")
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
            if self.tls_used:
                return self._finish("tls_failed", "connection closed during the TLS handshake (%s)" % exc)
            return self._finish("aborted", "connection reset while connecting (%s)" % exc)
        except OSError as exc:
            return self._finish("refused", "connection failed: %s" % (exc.strerror or exc))

    async def _connect_raw(self, first):
        req = self.req
        loop = asyncio.get_running_loop()
        sock = socket.socket(_numeric_family(req["host"]), socket.SOCK_STREAM)
        sent = None
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if req.get("bind_address"):
                sock.bind((req["bind_address"], 0))
            err = sock.connect_ex((req["host"], req["port"]))
            if err not in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
                raise OSError(err, os.strerror(err))  # OSError picks the subclass, e.g. refused
            # Send the request straight away: when the handshake is already complete (on
            # loopback it completes inside connect) this saves waiting for writability; while
            # it is still in progress the send fails with EAGAIN and nothing is queued.
            try:
                sent = sock.send(first)
            except (BlockingIOError, InterruptedError):
                await _wait_connected(loop, sock)
        except BaseException:
            sock.close()
            raise
        self.proto = _RawConnection(loop, sock)
        if sent is None:
            self.proto.write(first)
        elif sent < len(first):
            self.proto.write(first[sent:])
        return self.proto

    async def _connect_transport(self):
        req = self.req
        loop = asyncio.get_running_loop()
        kwargs = {}
        if req.get("bind_address"):
            kwargs["local_addr"] = (req["bind_address"], 0)
        if self.tls_used:
            kwargs["ssl"] = req.get("ssl_context") or make_ssl_context(req["tls"])
            kwargs["server_hostname"] = req["tls"].get("server_name") or req["host"]
        transport, proto = await loop.create_connection(_PduProtocol, req["host"], req["port"], **kwargs)
        self.proto = proto
        if self.tls_used:
            ssl_object = transport.get_extra_info("ssl_object")
            cipher = ssl_object.cipher() if ssl_object else None
            self.result["tls"] = {
                "version": ssl_object.version() if ssl_object else None,
                "cipher": cipher[0] if cipher else None,
                "peer_subject": _peer_subject(ssl_object),
            }
        return proto

    def _finish(self, outcome, detail=None):
        self.result["outcome"] = outcome
        if detail:
            self.result["detail"] = detail
        return None

    def _latency(self):
        self.result["latency_ms"] = round((time.perf_counter() - self._start) * 1000.0, 3)

    def _closed(self, exc):
        """Classify a close or reset that arrives instead of the association answer."""
        err = exc.error
        if isinstance(err, ssl.SSLError) or (self.tls_used and err is not None and "SSL" in type(err).__name__):
            # TLS 1.3 finishes the client's handshake before the server has checked the
            # client certificate; the server's verdict arrives as an alert on first read.
            return self._finish("tls_failed", "TLS alert from peer: %s" % _ssl_reason(err))
        what = "reset" if isinstance(err, ConnectionResetError) else "closed"
        tls_version = (self.result.get("tls") or {}).get("version")
        if tls_version == "TLSv1.3" and what == "reset" and not self.proto.buffer:
            # In TLS 1.3 the server checks the client certificate after the client has
            # finished its handshake; OpenSSL-based servers then often reset the
            # connection (the request is still unread) before their alert is read.
            return self._finish(
                "tls_failed",
                "connection reset right after the TLS 1.3 handshake, before any DICOM answer; "
                "the server most likely refused the client certificate",
            )
        if self.tls_used and self.result.get("tls") and not self.proto.buffer:
            detail = "connection %s over TLS before any DICOM answer" % what
        else:
            detail = "connection %s by peer without an association answer" % what
        return self._finish("aborted", detail)

    async def _run(self):
        req = self.req
        associate_rq = req.get("associate_rq") or pdu.build_associate_rq(
            req["called_ae"],
            req["calling_ae"],
            req.get("dimse", "echo"),
            req.get("identity"),
            positive_response=(req.get("identity") or {}).get("positive_response_requested", False),
        )
        proto = await self._connect(associate_rq)
        if proto is None:
            self._latency()
            return
        self.phase = "association"
        if isinstance(proto, _PduProtocol):
            proto.write(associate_rq)  # a raw connection has sent it while connecting
        try:
            header = await proto.read_exactly(6)
            pdu_type, length = pdu.parse_header(header)
            pdu.check_answer_header(pdu_type, length)
            answer = header + await proto.read_exactly(length)
        except _Closed as exc:
            self._latency()
            return self._closed(exc)
        except pdu.ProtocolError as exc:
            self._latency()
            proto.write(pdu.abort_bytes(2, 1))
            return self._finish("aborted", "protocol error: %s" % exc)
        self._latency()

        if pdu_type == pdu.PDU_ASSOCIATE_RJ:
            self.result["reject"] = pdu.decode_reject(answer)
            return self._finish("rejected", None)
        if pdu_type == pdu.PDU_ABORT:
            self.result["abort"] = pdu.decode_abort(answer)
            return self._finish("aborted", "peer answered the request with A-ABORT")
        try:
            accept = pdu.parse_accept(answer)
        except pdu.ProtocolError as exc:
            proto.write(pdu.abort_bytes(2, 6))
            return self._finish("aborted", "protocol error: %s" % exc)
        self.result["outcome"] = "accepted"
        self.result["identity_response"] = accept["identity_response"]
        self.result["accepted_contexts"] = sorted(cid for cid, res in accept["contexts"].items() if res == 0)
        await self._dimse(proto, accept)
        await self._release(proto)

    async def _dimse(self, proto, accept):
        dimse = self.req.get("dimse", "echo")
        if dimse == "none":
            return
        context_id = pdu.CONTEXT_FIND if dimse == "find" else pdu.CONTEXT_ECHO
        if accept["contexts"].get(context_id) != 0:
            self.result["detail"] = "the %s presentation context was not accepted" % (
                "Study Root C-FIND" if dimse == "find" else "Verification"
            )
            return
        self.phase = "C-FIND" if dimse == "find" else "C-ECHO"
        proto.write(pdu.find_rq_bytes() if dimse == "find" else pdu.echo_rq_bytes())
        matches = 0
        try:
            while True:
                status, has_data = await self._read_response(proto)
                category = pdu.status_category(status)
                if category == "pending" and dimse == "find":
                    matches += 1
                    if has_data:
                        # The identifier is skipped unparsed: only the count is reported.
                        await self._skip_dataset(proto)
                    if matches >= MAX_FIND_MATCHES:
                        self.result["detail"] = "stopped counting at %d matches" % matches
                        break
                    continue
                self.result["dimse_status"] = status
                self.result["dimse_status_category"] = category
                break
        except _Closed as exc:
            self.result["detail"] = "association ended during %s: %s" % (self.phase, exc)
        except pdu.ProtocolError as exc:
            self.result["detail"] = "%s during %s" % (exc, self.phase)
            proto.write(pdu.abort_bytes(2, 1))
            self.ended = True
        except _AbortedByPeer as exc:
            self.result["abort"] = exc.names
            self.result["detail"] = "peer aborted the association during %s" % self.phase
            self.ended = True
        if dimse == "find":
            self.result["matches"] = matches

    async def _next_pdata(self, proto):
        pdu_type, data = await proto.read_pdu(pdu.MAX_PDATA_ACCEPTED)
        if pdu_type == pdu.PDU_ABORT:
            raise _AbortedByPeer(pdu.decode_abort(data) if len(data) == 10 else abort_unknown())
        if pdu_type != pdu.PDU_P_DATA_TF:
            raise pdu.ProtocolError("unexpected %s during %s" % (pdu.PDU_NAMES[pdu_type], self.phase))
        return list(pdu.split_pdvs(data[6:]))

    async def _read_response(self, proto):
        """Read one DIMSE response's command set; return (status, has data set)."""
        command = b""
        while True:
            for _context, control, data in await self._next_pdata(proto):
                if not control & 0x01:
                    raise pdu.ProtocolError("data set fragment where a command was expected")
                command += data
                if len(command) > 65536:
                    raise pdu.ProtocolError("DIMSE command set larger than 64 KiB")
                if control & 0x02:
                    status, _field, has_data = pdu.decode_command(command)
                    return status, has_data

    async def _skip_dataset(self, proto):
        while True:
            for _context, control, _data in await self._next_pdata(proto):
                if control & 0x01:
                    raise pdu.ProtocolError("command fragment inside a data set")
                if control & 0x02:
                    return

    async def _release(self, proto):
        """Release politely (PS3.8 7.2) so servers log a clean end, not an abort."""
        if proto.closed or self.ended:
            return
        self.phase = "release"
        proto.write(pdu.RELEASE_RQ_BYTES)
        try:
            while True:
                pdu_type, _data = await proto.read_pdu(pdu.MAX_PDATA_ACCEPTED)
                if pdu_type == pdu.PDU_RELEASE_RP:
                    self.result["released"] = True
                    return
                if pdu_type == pdu.PDU_ABORT:
                    return
        except (_Closed, pdu.ProtocolError):
            return


async def _wait_connected(loop, sock):
    """Wait for a non-blocking connect to finish; raise its error, as sock_connect does."""
    done = loop.create_future()
    fd = sock.fileno()
    loop.add_writer(fd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_writer(fd)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


class _AbortedByPeer(Exception):
    def __init__(self, names):
        Exception.__init__(self, "aborted by peer")
        self.names = names


def abort_unknown():
    return pdu.abort_names(None, None)


def _ssl_reason(exc):
    if exc is None:
        return "unknown"
    reason = getattr(exc, "reason", None)
    return reason or str(exc)


async def probe_async(req):
    """Run one probe and return its result dict."""
    return await Probe(req).run()


async def probe_many_async(requests, concurrency=32):
    """Run many probes with at most ``concurrency`` connections in flight."""
    semaphore = asyncio.Semaphore(max(1, int(concurrency)))

    async def one(req):
        async with semaphore:
            return await Probe(req).run()

    return await asyncio.gather(*(one(req) for req in requests))


def probe(req):
    """Run one probe synchronously."""
    return asyncio.run(probe_async(req))


def probe_many(requests, concurrency=32):
    """Run many probes synchronously; results are in the order of ``requests``."""
    return asyncio.run(probe_many_async(requests, concurrency))


def outcome_message(result):
    """One readable sentence about a probe result."""
    target = "%s:%s (called %s, calling %s)" % (
        result["host"], result["port"], result["called_ae"], result["calling_ae"]
    )
    outcome = result["outcome"]
    if outcome == "rejected":
        rj = result["reject"]
        text = "association to %s rejected: %s %s, reason %d %s" % (
            target, rj["result_name"], rj["source_name"], rj["reason"], rj["reason_name"]
        )
    elif outcome == "accepted":
        text = "association to %s accepted" % target
        if result.get("tls"):
            text += " over %s" % result["tls"]["version"]
        if result["dimse_status"] is not None:
            text += "; %s status 0x%04x (%s)" % (
                "C-FIND" if result["dimse"] == "find" else "C-ECHO",
                result["dimse_status"],
                result["dimse_status_category"],
            )
            if result["dimse"] == "find":
                text += ", %d matches" % (result["matches"] or 0)
    else:
        text = "association to %s %s" % (target, outcome.replace("_", " "))
    if result.get("detail"):
        text += " (%s)" % result["detail"]
    return text


def expectation_error(result, expect="any", expect_reason=None):
    """Return why a result does not meet ``expect``/``expect_reason``, or None."""
    outcome = result["outcome"]
    if expect == "accepted" and outcome != "accepted":
        return "expected the association to be accepted, but it was %s" % outcome
    if expect == "denied" and outcome == "accepted":
        return "expected the association to be denied, but it was accepted"
    if expect == "rejected" and outcome != "rejected":
        return "expected an A-ASSOCIATE-RJ, but the association was %s" % outcome
    if expect_reason:
        reject = result.get("reject")
        if outcome != "rejected" or reject is None:
            return "expected a reject with reason %s, but the association was %s" % (expect_reason, outcome)
        if reject["reason_name"] != expect_reason:
            return "expected reject reason %s, but the reason was %s (%d)" % (
                expect_reason, reject["reason_name"], reject["reason"]
            )
    return None
