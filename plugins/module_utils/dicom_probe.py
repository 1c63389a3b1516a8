# -*- coding: utf-8 -*-
# Copyright: contributors to the dicomsec.hardening collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An association engine on asyncio that classifies outcomes from the bytes on the wire.

One probe opens a TCP (optionally TLS) connection, sends an A-ASSOCIATE-RQ, reads exactly
one answer PDU and names what happened to the association: ``accepted``, ``rejected``,
``aborted``, ``refused``, ``timeout`` or ``tls_failed``.  If the association was accepted
it may run one operation (C-ECHO, a count-only C-FIND or a C-STORE of one synthetic
instance), reported apart from the association as ``operation``, and then releases.

The wire format is pynetdicom's (see dicom_pdu).  What this file owns is what the library
cannot give a verifier:

- the transport: TCP or TLS from a chosen source address, with the TLS facts reported;
- reads bounded against hostile peers: a declared length is checked before the body is
  read, the receive buffer stops reading when it is full, and bytes that arrived before a
  close or reset are always handed out first, so a server that sends an A-ASSOCIATE-RJ
  and resets at once is a reject, not an abort.  pynetdicom's ``Association`` is not used
  for the handshake: its state machine has been seen, under concurrency, to see the
  peer's close before it had parsed the reject.  asyncio's StreamReader has the same
  trait (an error set by the transport is raised before buffered bytes are read), hence
  the small Protocol below;
- hard deadlines: a silent, trickling or giant-talking peer costs at most the timeout; with
  ``connect_timeout`` the TCP connect has a deadline of its own, so a host that never
  answers a SYN costs that and not the (longer) time a server may take to answer;
- concurrency: probes are asyncio tasks sharing one event loop and one semaphore.
"""

from __future__ import annotations

__metaclass__ = type

import asyncio
import errno
import ipaddress
import os
import socket
import ssl
import threading
import time
import warnings
import weakref

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_pdu as pdu

OUTCOMES = ("accepted", "rejected", "aborted", "refused", "timeout", "tls_failed")
DIMSE_CHOICES = ("echo", "find", "store", "none")
# Lowest first; dicom_args offers the same names as the modules' choices.
TLS_VERSION_NAMES = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
# Stop counting C-FIND matches here and cancel: the count is evidence of exposure, and a
# verifier must not pull a whole archive's index.
MAX_FIND_MATCHES = 1000
# Stop reading from a peer once this much is buffered and unread; reading resumes when the
# probe needs more.  A flood costs this much memory, not all the peer can send.
MAX_BUFFERED = 4 * pdu.MAX_PDATA_ACCEPTED
# Descriptors kept free for the interpreter, the event loop and TLS when concurrency is
# capped by the process's open-file limit.
FD_RESERVE = 64


class _Closed(Exception):
    """The peer closed or reset the connection; ``error`` is the transport's exception."""

    def __init__(self, error=None):
        Exception.__init__(self, str(error) if error else "connection closed by peer")
        self.error = error


class _AbortedByPeer(Exception):
    def __init__(self, names):
        Exception.__init__(self, "aborted by peer")
        self.names = names


class _AddressFamilyMismatch(OSError):
    """The source address and the destination share no address family."""


class _Stream(asyncio.Protocol):
    """A connection whose receive buffer a close or reset cannot discard.

    Bytes already received are always handed out before a close is reported; reading
    pauses while more than MAX_BUFFERED bytes wait unread.
    """

    def __init__(self):
        self.transport = None
        self.buffer = bytearray()
        self.closed = False
        self.error = None
        self._waiter = None
        self._paused = False

    # asyncio.Protocol callbacks

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        if len(self.buffer) > MAX_BUFFERED and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self):
        self.closed = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc):
        self.closed = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()

    def _wake(self):
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # what the probe uses

    async def read_exactly(self, count):
        while len(self.buffer) < count:
            if self.closed:
                raise _Closed(self.error)
            if self._paused:
                self._paused = False
                self.transport.resume_reading()
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

    def send(self, data):
        """Queue ``data``; a failure is left for the next read to report."""
        if not self.closed and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self):
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


# ---------------------------------------------------------------------------------------
# Name lookup: on a daemon thread, so a dead resolver costs at most the probe's timeout
# and never holds up the end of the run (asyncio's default executor would be joined).
# ---------------------------------------------------------------------------------------

_FAMILIES = {}


def _numeric_family(host):
    """Return the address family of a numeric IP address, or None for a host name.

    Read by ipaddress, the collection's one address reader. A zone index (fe80::1%eth0)
    goes the host-name way: getaddrinfo turns it into the scope id a socket needs.
    """
    if host not in _FAMILIES:
        family = None
        if "%" not in host:
            try:
                family = socket.AF_INET if ipaddress.ip_address(host).version == 4 else socket.AF_INET6
            except ValueError:
                pass
        _FAMILIES[host] = family
    return _FAMILIES[host]


def _lookup(host, port):
    try:
        return [
            (family, address)
            for family, dummy_type, dummy_proto, dummy_name, address in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        ]
    except OSError as exc:
        return exc
    except Exception as exc:  # e.g. UnicodeError for "a..b" or a label over 63 characters
        return socket.gaierror(socket.EAI_NONAME, "%s is not a usable host name (%s)" % (host, exc))


class _Lookups:
    """One lookup per (host, port) per run, shared by every probe that needs it."""

    def __init__(self):
        self.futures = {}

    def resolve(self, host, port):
        key = (host, port)
        future = self.futures.get(key)
        if future is None or (future.done() and isinstance(future.result(), Exception)):
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            self.futures[key] = future

            def work():
                answer = _lookup(host, port)
                try:
                    loop.call_soon_threadsafe(_settle, future, answer)
                except RuntimeError:  # the run ended before the resolver answered
                    pass

            thread = threading.Thread(target=work)
            thread.daemon = True
            thread.start()
        return future


def _settle(future, answer):
    if not future.done():
        future.set_result(answer)


async def _resolve(lookups, host, port):
    """Addresses for host (numeric ones without a lookup), as (family, sockaddr) pairs."""
    family = _numeric_family(host)
    if family is not None:
        return [(family, (host, port))]
    # shield: a probe's deadline must not cancel a lookup other probes share.
    answer = await asyncio.shield(lookups.resolve(host, port))
    if isinstance(answer, Exception):
        raise answer
    return answer


# ---------------------------------------------------------------------------------------
# TLS options
# ---------------------------------------------------------------------------------------


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
        if tls.get(key) and tls[key] not in TLS_VERSION_NAMES:
            return "tls.%s must be one of %s" % (key, ", ".join(TLS_VERSION_NAMES))
    if tls.get("min_version") and tls.get("max_version"):
        if TLS_VERSION_NAMES.index(tls["min_version"]) > TLS_VERSION_NAMES.index(tls["max_version"]):
            return "tls.min_version is above tls.max_version"
    try:
        make_ssl_context(tls)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        return "TLS settings are unusable: %s" % exc
    return None


# The TLS connections (ssl.SSLObject) whose server asked for a client certificate in the
# handshake. nginx's stream module finishes every handshake and only then closes a
# connection that sent no required certificate, cleanly and without an alert: only this
# record of the server's CertificateRequest tells that close from any other.
_CERTIFICATE_REQUESTED = weakref.WeakSet()
_TLS_HANDSHAKE = 22
_TLS_CERTIFICATE_REQUEST = 13


def _note_tls_message(conn, direction, version, content_type, msg_type, data):
    if direction == "read" and content_type == _TLS_HANDSHAKE and msg_type == _TLS_CERTIFICATE_REQUEST:
        _CERTIFICATE_REQUESTED.add(conn)


def make_ssl_context(tls):
    """Build the client SSLContext for a ``tls`` options dict."""
    with warnings.catch_warnings():
        # Offering TLS 1.0/1.1 is deliberate here (to prove a server refuses them).
        warnings.simplefilter("ignore", DeprecationWarning)
        return _make_ssl_context(tls)


def _tls_version(name):
    """ssl.TLSVersion member for "TLSv1.2" and the like (TLSv1_2)."""
    return getattr(ssl.TLSVersion, name.replace(".", "_"))


def _make_ssl_context(tls):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    min_version = tls.get("min_version") or "TLSv1.2"
    max_version = tls.get("max_version")
    modern = TLS_VERSION_NAMES.index("TLSv1.2")
    if TLS_VERSION_NAMES.index(min_version) < modern or (
        max_version and TLS_VERSION_NAMES.index(max_version) < modern
    ):
        # OpenSSL 3 refuses TLS 1.0/1.1 at its default security level; a probe that offers
        # them on purpose (to prove a server refuses them) has to lower it.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = _tls_version(min_version)
    if max_version:
        context.maximum_version = _tls_version(max_version)
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
    try:
        # CPython's hook for OpenSSL's message callback (3.8 and later); without it a
        # certificate refusal after the handshake stays an "aborted" close.
        context._msg_callback = _note_tls_message
    except (AttributeError, NotImplementedError):
        pass
    return context


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


def _ssl_reason(exc):
    if exc is None:
        return "unknown"
    reason = getattr(exc, "reason", None)
    return reason or str(exc)


# ---------------------------------------------------------------------------------------
# Request validation
# ---------------------------------------------------------------------------------------


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


def connect_timeout_error(value):
    """Return why ``value`` is not a usable connect_timeout (None means none), or None."""
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        return "connect_timeout must be a positive number of seconds"
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
    err = connect_timeout_error(req.get("connect_timeout"))
    if err:
        errors.append(err)
    if req.get("dimse", "echo") not in DIMSE_CHOICES:
        errors.append("dimse must be one of %s" % ", ".join(DIMSE_CHOICES))
    return errors


# ---------------------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------------------


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
        "operation": None,
        "latency_ms": None,
        "elapsed_ms": None,
        "detail": None,
        "released": False,
        # Whether the TCP connection was made: a timeout without it is a host that never
        # answered, one with it a server that did not answer in time.
        "connected": False,
        # The local address of the connection, once made: what the server's logs record.
        "source_address": None,
        # "reset" or "closed" when the connection ended before any whole answer PDU: what
        # an overloaded server produces as readily as a refusing one.
        "no_answer": None,
        # Every operation run on the association, in order; "operation" is the first.
        "operations": [],
    }


def _new_operation(dimse):
    operation = {
        "name": pdu.OPERATIONS[dimse]["name"],
        "result": None,
        "succeeded": False,
        "status": None,
        "status_category": None,
        "detail": None,
    }
    if dimse == "find":
        operation["matches"] = 0
    if dimse == "store":
        operation["sop_instance_uid"] = None
        operation["study_instance_uid"] = None
    if dimse in ("move", "get"):
        operation["pending"] = 0
        operation["suboperations"] = None
    return operation


_TIMEOUT = getattr(asyncio, "timeout", None)  # Python 3.11 and later


async def _within(coroutine, seconds):
    """Await ``coroutine`` under a deadline; raise asyncio.TimeoutError when it passes.

    asyncio.timeout cancels the awaiting task itself. asyncio.wait_for, all that Python
    before 3.11 has, runs the coroutine in a task of its own: a task, a future and their
    callbacks more for every deadline of every probe.
    """
    if _TIMEOUT is None:
        return await asyncio.wait_for(coroutine, seconds)
    async with _TIMEOUT(seconds):
        return await coroutine


class Probe:
    """One association attempt, described by a request dict.

    Keys: host, port, called_ae, calling_ae, timeout, connect_timeout (optional: a deadline
    of its own for name lookup and TCP connect, after which ``timeout`` starts), bind_address,
    tls (dict or None), identity (dict or None), dimse (echo/find/store/none), ssl_context
    (optional prebuilt), associate_rq (optional prebuilt request bytes, for many probes with
    the same request), operations (optional: several of echo/find/store/move/get to run in
    turn on the one association, instead of ``dimse``), study_uid and move_destination (for
    move and get).
    """

    def __init__(self, req, lookups=None):
        self.req = req
        self.result = _new_result(req)
        self.lookups = lookups or _Lookups()
        self.stream = None
        self.phase = "connect"
        self.tls_used = bool(req.get("tls") and req["tls"].get("enabled"))
        self.ended = False  # an A-ABORT was sent or received: nothing left to release
        self.current = None  # the operation in progress
        self._context = None
        self._start = None

    async def run(self):
        """Run the probe under its deadline(s); return the result dict."""
        self._start = time.perf_counter()
        timeout = self.req.get("timeout", 10)
        connect_timeout = self.req.get("connect_timeout")
        try:
            if connect_timeout:
                try:
                    sock = await _within(self._open_socket(), connect_timeout)
                except asyncio.TimeoutError:
                    self._finish("timeout", "no TCP connection within %ss (connect timeout)" % connect_timeout)
                    sock = None
                if sock is not None:
                    await _within(self._run(sock), timeout)
            else:
                await _within(self._run(), timeout)
        except asyncio.TimeoutError:
            self._on_timeout()
        except Exception as exc:  # never let one hostile peer take the whole run down
            if self.result["outcome"] is None:
                self.result["outcome"] = "aborted"
                self.result["detail"] = "unexpected error during %s: %s" % (self.phase, exc)
            elif not self.result["detail"]:
                self.result["detail"] = "error after the association answer: %s" % exc
        finally:
            if self.stream is not None:
                self.stream.close()
        self.result["elapsed_ms"] = round((time.perf_counter() - self._start) * 1000.0, 3)
        return self.result

    def _on_timeout(self):
        timeout = self.req.get("timeout", 10)
        if self.result["outcome"] is None:
            self.result["outcome"] = "timeout"
            self.result["detail"] = "no answer within %ss (waiting during %s)" % (timeout, self.phase)
            return
        operation = self.current
        if operation is not None and operation["result"] is None:
            operation["result"] = "timeout"
            operation["detail"] = "no response within %ss" % timeout
        # The association answer arrived; only what came after it ran out of time.
        note = "timed out after the association answer, during %s" % self.phase
        detail = self.result["detail"]
        self.result["detail"] = "%s; %s" % (detail, note) if detail else note

    def _finish(self, outcome, detail=None):
        self.result["outcome"] = outcome
        if detail:
            self.result["detail"] = detail

    def _latency(self):
        self.result["latency_ms"] = round((time.perf_counter() - self._start) * 1000.0, 3)

    # --- transport ------------------------------------------------------------------

    async def _open_socket(self):
        """Look the host up and connect TCP; return the socket, or None when the outcome is
        already decided."""
        req = self.req
        try:
            # Built before connecting: a context that cannot be built leaves no socket open.
            self._context = (req.get("ssl_context") or make_ssl_context(req["tls"])) if self.tls_used else None
            addresses = await _resolve(self.lookups, req["host"], req["port"])
            sock = await self._connect_tcp(asyncio.get_running_loop(), addresses)
        except OSError as exc:
            return self._connect_failed(exc)
        self.result["connected"] = True
        try:
            # The address the server saw: on a host with several, the route chose it.
            self.result["source_address"] = sock.getsockname()[0]
        except OSError:
            pass
        return sock

    async def _connect(self, sock=None):
        """Connect (and shake hands over TLS); return the stream, or None when the outcome
        is already decided.  ``sock``: already connected by _open_socket."""
        req = self.req
        loop = asyncio.get_running_loop()
        if sock is None:
            sock = await self._open_socket()
            if sock is None:
                return None
        context = self._context
        stream = _Stream()
        try:
            if self.tls_used:
                self.phase = "TLS handshake"
                await loop.create_connection(
                    lambda: stream, sock=sock, ssl=context,
                    server_hostname=req["tls"].get("server_name") or req["host"],
                )
                ssl_object = stream.transport.get_extra_info("ssl_object")
                cipher = ssl_object.cipher() if ssl_object is not None else None
                self.result["tls"] = {
                    "version": ssl_object.version() if ssl_object is not None else None,
                    "cipher": cipher[0] if cipher else None,
                    "peer_subject": _peer_subject(ssl_object),
                    "certificate_requested": ssl_object is not None and ssl_object in _CERTIFICATE_REQUESTED,
                }
            else:
                await loop.create_connection(lambda: stream, sock=sock)
        except OSError as exc:
            sock.close()
            return self._connect_failed(exc)
        except BaseException:
            sock.close()
            raise
        self.stream = stream
        return stream

    async def _connect_tcp(self, loop, addresses):
        """Connect to the first address that answers; return the connected socket."""
        bind = self.req.get("bind_address")
        if bind:
            bind_family = _numeric_family(bind)
            addresses = [a for a in addresses if a[0] == bind_family]
            if not addresses:
                version = 6 if bind_family == socket.AF_INET6 else 4
                raise _AddressFamilyMismatch(
                    "bind_address %s is IPv%d, and %s has no IPv%d address" % (bind, version, self.req["host"], version)
                )
        error = None
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if bind:
                    sock.bind((bind, 0))
                await loop.sock_connect(sock, address)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
            except BaseException:  # the deadline, or the run being closed
                sock.close()
                raise
        raise error if error is not None else OSError(errno.EHOSTUNREACH, "no address to connect to")

    def _connect_failed(self, exc):
        if isinstance(exc, ssl.SSLError):
            return self._finish("tls_failed", "TLS handshake failed: %s" % _ssl_reason(exc))
        if isinstance(exc, ConnectionRefusedError):
            return self._finish("refused", "connection refused")
        if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
            self.result["no_answer"] = "reset"
            if self.phase == "TLS handshake":
                return self._finish("tls_failed", "connection closed during the TLS handshake (%s)" % exc)
            return self._finish("aborted", "connection reset while connecting (%s)" % exc)
        if isinstance(exc, _AddressFamilyMismatch):
            return self._finish("refused", str(exc))
        if isinstance(exc, socket.gaierror):
            return self._finish("refused", "host name lookup failed: %s" % (exc.strerror or exc))
        if self.phase == "TLS handshake":
            return self._finish("tls_failed", "TLS handshake failed: %s" % (exc.strerror or exc))
        return self._finish("refused", "connection failed: %s" % (exc.strerror or exc))

    def _closed(self, exc):
        """Classify a close or reset that arrives instead of the association answer."""
        err = exc.error
        if self.tls_used and isinstance(err, ssl.SSLError):
            # TLS 1.3 finishes the client's handshake before the server has checked the
            # client certificate; the server's verdict arrives as an alert on first read.
            return self._finish("tls_failed", "TLS alert from peer: %s" % _ssl_reason(err))
        what = "reset" if isinstance(err, ConnectionResetError) else "closed"
        tls = self.result.get("tls") or {}
        if tls.get("certificate_requested") and not (self.req.get("tls") or {}).get("cert_file"):
            # The request was sent and not answered: the server asked for a certificate,
            # got none, and closed before reading a byte of DICOM (nginx's way).
            return self._finish(
                "tls_failed",
                "the server asked for a client certificate in the TLS handshake, none was sent, and it %s "
                "the connection before any DICOM answer" % ("reset" if what == "reset" else "closed"),
            )
        tls_version = tls.get("version")
        if tls_version == "TLSv1.3" and what == "reset":
            # In TLS 1.3 the server checks the client certificate after the client has
            # finished its handshake; OpenSSL-based servers then often reset the
            # connection (the request is still unread) before their alert is read.
            return self._finish(
                "tls_failed",
                "connection reset right after the TLS 1.3 handshake, before any DICOM answer; "
                "the server most likely refused the client certificate",
            )
        self.result["no_answer"] = what
        if self.tls_used and self.result.get("tls"):
            detail = "connection %s over TLS before any DICOM answer" % what
        else:
            detail = "connection %s by peer without an association answer" % what
        return self._finish("aborted", detail)

    # --- association ----------------------------------------------------------------

    async def _run(self, sock=None):
        req = self.req
        dimse = req.get("dimse", "echo")
        associate_rq = req.get("associate_rq") or pdu.build_associate_rq(
            req["called_ae"],
            req["calling_ae"],
            dimse,
            req.get("identity"),
            positive_response=(req.get("identity") or {}).get("positive_response_requested", False),
            offer=tuple(req.get("operations") or ()),
        )
        stream = await self._connect(sock)
        if stream is None:
            self._latency()
            return
        stream.send(associate_rq)
        self.phase = "association"
        try:
            header = await stream.read_exactly(6)
            pdu_type, length = pdu.parse_header(header)
            pdu.check_answer_header(pdu_type, length)
            answer = header + (await stream.read_exactly(length))
        except _Closed as exc:
            self._latency()
            return self._closed(exc)
        except pdu.ProtocolError as exc:
            self._latency()
            self._finish("aborted", "protocol error: %s" % exc)
            self._abort(2, 1)
            return None
        self._latency()

        try:
            if pdu_type == pdu.PDU_ASSOCIATE_RJ:
                self.result["reject"] = pdu.decode_reject(answer)
                return self._finish("rejected")
            if pdu_type == pdu.PDU_ABORT:
                self.result["abort"] = pdu.decode_abort(answer)
                return self._finish("aborted", "peer answered the request with A-ABORT")
            accept = pdu.decode_accept(answer)
        except pdu.ProtocolError as exc:
            self._finish("aborted", "protocol error: %s" % exc)
            self._abort(2, 6)
            return None
        self.result["outcome"] = "accepted"
        self.result["identity_response"] = accept["identity_response"]
        self.result["accepted_contexts"] = sorted(cid for cid, res in accept["contexts"].items() if res == 0)
        operations = list(req.get("operations") or ([dimse] if dimse in pdu.OPERATIONS else []))
        for index, name in enumerate(operations):
            if self.ended or stream.closed:
                # The association is gone: say so rather than leave the operation out.
                skipped = _new_operation(name)
                skipped["result"] = "not_run"
                skipped["detail"] = "the association ended during an earlier operation"
                self.result["operations"].append(skipped)
                continue
            await self._operation(stream, accept, name, message_id=index + 1)
        if self.result["operations"]:
            self.result["operation"] = self.result["operations"][0]
        await self._release(stream)
        return None

    def _abort(self, source, reason):
        if self.stream is not None:
            self.stream.send(pdu.abort_bytes(source, reason))
        self.ended = True

    # --- the operation --------------------------------------------------------------

    async def _operation(self, stream, accept, dimse, message_id=1):
        spec = pdu.OPERATIONS[dimse]
        operation = _new_operation(dimse)
        self.result["operations"].append(operation)
        if self.result["operation"] is None:
            self.result["operation"] = operation
        self.current = operation
        context_result = accept["contexts"].get(spec["context_id"])
        if context_result != 0:
            operation["result"] = "context_rejected"
            operation["detail"] = "the server did not accept the %s presentation context (%s)" % (
                spec["name"], "not answered" if context_result is None else "result %d" % context_result
            )
            return
        self.phase = spec["name"]
        peer_max = accept["max_pdu"]
        if dimse == "echo":
            stream.send(pdu.echo_request(peer_max, message_id))
        elif dimse == "find":
            stream.send(pdu.find_request(peer_max, message_id))
        elif dimse == "move":
            stream.send(pdu.move_request(peer_max, self.req["study_uid"], self.req["move_destination"], message_id))
        elif dimse == "get":
            stream.send(pdu.get_request(peer_max, self.req["study_uid"], message_id))
        else:
            if self.req.get("store_not_sent"):
                # Check mode: the storage context is accepted, which is all that can be
                # proven without writing to the archive.
                operation["result"] = "not_sent"
                operation["detail"] = "check mode: the storage context was accepted; the C-STORE was not sent"
                return
            instance = pdu.probe_instance()
            operation["sop_instance_uid"] = str(instance.SOPInstanceUID)
            operation["study_instance_uid"] = str(instance.StudyInstanceUID)
            stream.send(pdu.store_request(instance, peer_max, message_id))
        cancelled = False
        try:
            while True:
                field, responded_to, status, dummy_has_data, suboperations = await self._read_response(stream)
                if field != spec["response"]:
                    raise pdu.ProtocolError("answered with command field 0x%04x instead of the %s response"
                                            % (field or 0, spec["name"]))
                if responded_to not in (None, message_id):
                    raise pdu.ProtocolError("response to message %s, not to the request sent" % responded_to)
                category = pdu.status_category(status)
                if category is None:
                    raise pdu.ProtocolError("%s response without a Status" % spec["name"])
                if dimse in ("move", "get"):
                    operation["suboperations"] = suboperations
                if category == "pending" and dimse == "find":
                    if not cancelled:
                        operation["matches"] += 1
                        if operation["matches"] >= MAX_FIND_MATCHES:
                            # Enough to prove exposure; ask the server to stop (PS3.4 C.4.1.2.3).
                            stream.send(pdu.cancel_request(message_id, spec["context_id"]))
                            cancelled = True
                    continue
                if category == "pending" and dimse in ("move", "get"):
                    # Sub-operations under way for a study that cannot exist: proof enough
                    # that the retrieve runs, and nothing of it is wanted (PS3.4 C.4.2.3.2).
                    operation["pending"] += 1
                    if not cancelled:
                        stream.send(pdu.cancel_request(message_id, spec["context_id"]))
                        cancelled = True
                    if operation["pending"] > MAX_FIND_MATCHES:
                        raise pdu.ProtocolError("more than %d pending %s responses after a C-CANCEL"
                                                % (MAX_FIND_MATCHES, spec["name"]))
                    continue
                operation["status"] = status
                operation["status_category"] = category
                break
        except _Closed as exc:
            operation["result"] = "closed"
            operation["detail"] = "connection %s during %s" % (
                "reset" if isinstance(exc.error, ConnectionResetError) else "closed", spec["name"])
            self.ended = True
            return
        except pdu.ProtocolError as exc:
            operation["result"] = "protocol_error"
            operation["detail"] = str(exc)
            self._abort(2, 1)
            return
        except _AbortedByPeer as exc:
            self.result["abort"] = exc.names
            operation["result"] = "aborted"
            operation["detail"] = "peer aborted the association during %s" % spec["name"]
            self.ended = True
            return
        category = operation["status_category"]
        self.current = None
        if cancelled and category in ("cancel", "success"):
            operation["result"] = "success"
            operation["detail"] = "stopped counting at %d matches and cancelled the query" % operation["matches"]
        else:
            operation["result"] = category if category != "pending" else "failure"
        # A stored instance with a warning (coercion, PS3.4 B.2.3) is stored; for C-ECHO and
        # C-FIND only success is success.
        operation["succeeded"] = operation["result"] == "success" or (dimse == "store" and operation["result"] == "warning")

    async def _next_pdvs(self, stream):
        pdu_type, data = await stream.read_pdu(pdu.MAX_PDATA_ACCEPTED)
        if pdu_type == pdu.PDU_ABORT:
            try:
                names = pdu.decode_abort(data)
            except pdu.ProtocolError:
                names = pdu.abort_names(None, None)
            raise _AbortedByPeer(names)
        if pdu_type != pdu.PDU_P_DATA_TF:
            raise pdu.ProtocolError("unexpected %s during %s" % (pdu.PDU_NAMES[pdu_type], self.phase))
        return pdu.decode_pdata(data)

    async def _read_response(self, stream):
        """Read one whole DIMSE response; return (command field, responded-to id, status,
        has data, sub-operation counts)."""
        reader = pdu.MessageReader()
        first = True
        while True:
            pdvs = await self._next_pdvs(stream)
            if first and len(pdvs) == 1:
                # Most answers are one PDU holding one whole command: decoded once per run.
                whole = pdu.whole_command(*pdvs[0])
                if whole is not None:
                    return whole
            first = False
            for context_id, value in pdvs:
                if reader.feed(context_id, value):
                    return reader.command() + (reader.suboperations(),)

    async def _release(self, stream):
        """Release politely (PS3.8 7.2) so servers log a clean end, not an abort."""
        if stream.closed or self.ended:
            return
        self.phase = "release"
        stream.send(pdu.release_rq_bytes())
        try:
            while True:
                pdu_type, dummy_data = await stream.read_pdu(pdu.MAX_PDATA_ACCEPTED)
                if pdu_type == pdu.PDU_RELEASE_RP:
                    self.result["released"] = True
                    return
                if pdu_type == pdu.PDU_ABORT:
                    return
        except (_Closed, pdu.ProtocolError):
            return


# ---------------------------------------------------------------------------------------
# Running probes
# ---------------------------------------------------------------------------------------


def usable_concurrency(wanted):
    """``wanted``, lowered so that every probe's socket fits under the open-file limit.

    Past the limit socket() fails with EMFILE, and a probe would report a healthy endpoint
    as unreachable.
    """
    wanted = max(1, int(wanted))
    try:
        import resource  # pylint: disable=import-outside-toplevel  # not on every platform

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))


class Runner:
    """Probes of one run: one event loop, one concurrency limit, one set of lookups."""

    def __init__(self, concurrency=32):
        self.limit = usable_concurrency(concurrency)
        self.lookups = _Lookups()
        self._semaphore = None

    async def probe(self, req):
        if self._semaphore is None:
            # Made inside the running loop (Python < 3.10 binds it at creation).
            self._semaphore = asyncio.Semaphore(self.limit)
        async with self._semaphore:
            return await Probe(req, self.lookups).run()

    async def probe_all(self, requests):
        return list(await asyncio.gather(*(self.probe(req) for req in requests)))


def run(coroutine):
    """Run a coroutine on a fresh event loop and close it, as asyncio.run does."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def probe(req):
    """Run one probe; return its result dict."""
    return run(Runner(1).probe(req))


def probe_many(requests, concurrency=32):
    """Run many probes with at most ``concurrency`` connections in flight; results are in
    the order of ``requests``."""
    return run(Runner(concurrency).probe_all(requests))


# ---------------------------------------------------------------------------------------
# Reading a result
# ---------------------------------------------------------------------------------------


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
        operation = result.get("operation")
        if operation is not None:
            text += "; %s %s" % (operation["name"], operation["result"].replace("_", " "))
            if operation["status"] is not None:
                text += " (status 0x%04x)" % operation["status"]
            if operation["name"] == "C-FIND" and operation["result"] in ("success", "warning"):
                text += ", %d matches" % operation["matches"]
            if operation.get("detail"):
                text += ": %s" % operation["detail"]
    else:
        text = "association to %s %s" % (target, outcome.replace("_", " "))
    if result.get("detail"):
        text += " (%s)" % result["detail"]
    return text


# The operation results that are the server's own answer refusing the request.  A close
# without an A-ABORT, a timeout or a garbled answer is not conclusive evidence of a refusal.
REFUSED_OPERATION_RESULTS = ("failure", "context_rejected", "aborted")


def expectation_error(result, expect="any", expect_reason=None):
    """Return why a result does not meet ``expect``/``expect_reason``, or None."""
    outcome = result["outcome"]
    operation = result.get("operation")
    if expect == "accepted":
        if outcome != "accepted":
            return "expected the association to be accepted, but it was %s" % outcome
        worked = operation is not None and (operation["succeeded"] or operation["result"] == "not_sent")
        if result.get("dimse", "echo") != "none" and not worked:
            return "the association was accepted, but the %s did not succeed (%s)" % (
                operation["name"] if operation else result.get("dimse"),
                (operation or {}).get("result") or "no result",
            )
    if expect == "denied" and outcome == "accepted":
        return "expected the association to be denied, but it was accepted"
    if expect == "rejected" and outcome != "rejected":
        return "expected an A-ASSOCIATE-RJ, but the association was %s" % outcome
    if expect == "operation_refused":
        if result.get("dimse", "echo") == "none":
            return "expect operation_refused needs an operation (dimse echo, find or store)"
        if outcome != "accepted":
            return "expected the association to be accepted and the operation refused, but the association was %s" % outcome
        if operation["result"] not in REFUSED_OPERATION_RESULTS:
            return "expected the server to refuse the %s, but its result was %s" % (operation["name"], operation["result"])
    if expect_reason:
        reject = result.get("reject")
        if outcome != "rejected" or reject is None:
            return "expected a reject with reason %s, but the association was %s" % (expect_reason, outcome)
        if reject["reason_name"] != expect_reason:
            return "expected reject reason %s, but the reason was %s (%d)" % (
                expect_reason, reject["reason_name"], reject["reason"]
            )
    return None
