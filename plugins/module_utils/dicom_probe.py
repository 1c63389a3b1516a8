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
and the outcome is decided from the PDU type byte.  Probes are generator tasks on the
scheduler in dicom_loop, so hundreds of them share one thread, and every probe has a hard
deadline, so a silent, trickling or giant-talking peer costs at most the timeout.

The ssl module is imported only when a probe or a check uses TLS: a plain audit does not
pay its start-up cost.
"""

from __future__ import annotations

__metaclass__ = type

import errno
import os
import socket
import time
import warnings

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_loop as loop
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_pdu as pdu

OUTCOMES = ("accepted", "rejected", "aborted", "refused", "timeout", "tls_failed")
DIMSE_CHOICES = ("echo", "find", "none")
# Lowest first; compared by position, so the ssl module is not needed to validate them.
# dicom_args offers the same names as the modules' choices.
TLS_VERSION_NAMES = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
# Stop counting C-FIND matches here and cancel: the count is evidence of exposure, and a
# verifier must not pull a whole archive's index.
MAX_FIND_MATCHES = 1000
# 64 KiB: a larger buffer is allocated with mmap and freed again on every call, which
# costs more than an association's whole answer on loopback.
RECV_SIZE = 65536


def _ssl():
    import ssl  # pylint: disable=import-outside-toplevel

    return ssl


class _Closed(Exception):
    """The peer closed or reset the connection; ``error`` is the socket's exception."""

    def __init__(self, error=None):
        Exception.__init__(self, str(error) if error else "connection closed by peer")
        self.error = error


class _Connection:
    """A non-blocking socket with a receive buffer that a close or reset cannot discard.

    Bytes already received are always handed out before a close is reported: a server
    that sends an A-ASSOCIATE-RJ and resets at once must not look like an abort.  Reads
    and sends are generators that suspend on the scheduler only when the socket would block.
    """

    # What a recv or send raises when it has to wait for readability or writability.
    _recv_waits_read = (BlockingIOError, InterruptedError)
    _recv_waits_write = ()
    _send_waits_read = ()
    _send_waits_write = (BlockingIOError, InterruptedError)
    # More bytes are needed only after a request went out, and its answer is almost never
    # there yet: waiting first saves a failed recv per answer.  A plain socket keeps no
    # bytes in user space, so its readiness report cannot miss any.
    _wait_before_recv = True

    def __init__(self, sock):
        self.sock = sock
        self.buffer = bytearray()
        self.closed = False
        self.error = None

    def _recv(self):
        """Receive once into the buffer; suspend while nothing is there."""
        if self._wait_before_recv:
            yield loop.wait_io(self.sock, loop.READ)
        while True:
            try:
                data = self.sock.recv(RECV_SIZE)
            except self._recv_waits_read:
                yield loop.wait_io(self.sock, loop.READ)
                continue
            except self._recv_waits_write:
                yield loop.wait_io(self.sock, loop.WRITE)
                continue
            except OSError as exc:
                self.closed, self.error = True, exc
                return
            if not data:
                # A TCP close; over TLS a close_notify, or a close without one
                # (suppress_ragged_eofs).
                self.closed = True
                return
            self.buffer += data
            return

    def read_exactly(self, count):
        while len(self.buffer) < count:
            if self.closed:
                raise _Closed(self.error)
            yield from self._recv()
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def read_pdu(self, max_length):
        """Read one PDU; raise ProtocolError before reading a body longer than max_length."""
        header = yield from self.read_exactly(6)
        pdu_type, length = pdu.parse_header(header)
        if pdu_type not in pdu.PDU_NAMES:
            raise pdu.ProtocolError("peer sent %s" % pdu.describe_pdu_type(pdu_type))
        if length > max_length:
            raise pdu.ProtocolError(
                "%s declares %d bytes, more than the %d accepted; not read"
                % (pdu.PDU_NAMES[pdu_type], length, max_length)
            )
        body = yield from self.read_exactly(length)
        return pdu_type, header + body

    def send(self, data):
        """Send all of ``data``; a failure is left for the next read to report.

        After a would-block the same bytes are offered again, as OpenSSL requires.
        """
        data = bytes(data)
        while data and not self.closed:
            try:
                sent = self.sock.send(data)
            except self._send_waits_write:
                yield loop.wait_io(self.sock, loop.WRITE)
                continue
            except self._send_waits_read:
                yield loop.wait_io(self.sock, loop.READ)
                continue
            except OSError:
                return
            data = data[sent:]

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class _TlsConnection(_Connection):
    """The same over a non-blocking SSLSocket, whose would-block signals are SSL errors.

    OpenSSL may hold decrypted bytes that the socket no longer reports as readable, so
    a TLS connection tries recv before it waits.
    """

    _wait_before_recv = False

    def __init__(self, sock):
        _Connection.__init__(self, sock)
        ssl = _ssl()
        self._recv_waits_read = (ssl.SSLWantReadError, BlockingIOError, InterruptedError)
        self._recv_waits_write = (ssl.SSLWantWriteError,)
        self._send_waits_read = (ssl.SSLWantReadError,)
        self._send_waits_write = (ssl.SSLWantWriteError, BlockingIOError, InterruptedError)

    def handshake(self):
        while True:
            try:
                self.sock.do_handshake()
                return
            except self._send_waits_read:
                yield loop.wait_io(self.sock, loop.READ)
            except self._recv_waits_write:
                yield loop.wait_io(self.sock, loop.WRITE)


class _Resolution:
    """A host name lookup on a daemon thread, so a dead resolver cannot outlast a timeout."""

    def __init__(self, host, port):
        self.addresses = None
        self.error = None
        # Imported here: numeric addresses, the audit's usual case, need no thread.
        import threading  # pylint: disable=import-outside-toplevel

        self.done = threading.Event()
        thread = threading.Thread(target=self._lookup, args=(host, port))
        thread.daemon = True
        thread.start()

    def _lookup(self, host, port):
        try:
            self.addresses = [
                (family, address)
                for family, dummy_type, dummy_proto, dummy_name, address in socket.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
            ]
        except OSError as exc:
            self.error = exc
        except Exception as exc:  # e.g. UnicodeError for "a..b" or a label over 63 characters
            self.error = socket.gaierror(socket.EAI_NONAME, "%s is not a usable host name (%s)" % (host, exc))
        finally:
            self.done.set()

    def wait(self):
        delay = 0.001
        while not self.done.is_set():
            yield loop.sleep(delay)
            delay = min(delay * 2, 0.05)
        if self.error is not None:
            raise self.error
        return self.addresses


_RESOLUTIONS = {}


def _resolve(host, port):
    """Addresses for host (numeric ones without a lookup), as (family, sockaddr) pairs."""
    family = _numeric_family(host)
    if family is not None:
        return [(family, (host, port))]
    key = (host, port)
    if key not in _RESOLUTIONS or _RESOLUTIONS[key].error is not None:
        _RESOLUTIONS[key] = _Resolution(host, port)
    addresses = yield from _RESOLUTIONS[key].wait()
    return addresses


_FAMILIES = {}


def _numeric_family(host):
    """Return the address family of a numeric IP address, or None for a host name."""
    if host not in _FAMILIES:
        family = None
        for candidate in (socket.AF_INET, socket.AF_INET6):
            try:
                socket.inet_pton(candidate, host)
            except (OSError, ValueError):
                continue
            family = candidate
            break
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


def make_ssl_context(tls):
    """Build the client SSLContext for a ``tls`` options dict."""
    with warnings.catch_warnings():
        # Offering TLS 1.0/1.1 is deliberate here (to prove a server refuses them).
        warnings.simplefilter("ignore", DeprecationWarning)
        return _make_ssl_context(tls)


def _tls_version(name):
    """ssl.TLSVersion member for "TLSv1.2" and the like (TLSv1_2)."""
    return getattr(_ssl().TLSVersion, name.replace(".", "_"))


def _make_ssl_context(tls):
    ssl = _ssl()
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
        self.conn = None
        self.phase = "connect"
        self.tls_used = bool(req.get("tls") and req["tls"].get("enabled"))
        self.ended = False  # an A-ABORT was sent or received: nothing left to release
        self._start = None

    def job(self):
        """This probe as a scheduler job with its own deadline."""
        return loop.Job(self.run(), self.req.get("timeout", 10))

    def run(self):
        """The probe as a generator task; returns the result dict."""
        start = time.perf_counter()
        self._start = start
        try:
            yield from self._run()
        except loop.DeadlineExceeded:
            self._on_timeout()
        except Exception as exc:  # never let one hostile peer take the whole run down
            if self.result["outcome"] is None:
                self.result["outcome"] = "aborted"
                self.result["detail"] = "unexpected error during %s: %s" % (self.phase, exc)
            elif not self.result["detail"]:
                self.result["detail"] = "error after the association answer: %s" % exc
        finally:
            if self.conn is not None:
                self.conn.close()
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

    def _connect(self, first):
        """Connect and send ``first`` (the request).

        Returns the connection, or None when the outcome is already decided.
        """
        self.phase = "connect"
        try:
            # Built before connecting: a context that cannot be built leaves no socket open.
            context = (self.req.get("ssl_context") or make_ssl_context(self.req["tls"])) if self.tls_used else None
            addresses = yield from _resolve(self.req["host"], self.req["port"])
            sock, sent = yield from self._connect_tcp(addresses, None if self.tls_used else first)
            if not self.tls_used:
                self.conn = _Connection(sock)
                if sent < len(first):
                    yield from self.conn.send(first[sent:])
                return self.conn
            self.phase = "TLS handshake"
            yield from self._start_tls(sock, context)
            yield from self.conn.send(first)
            return self.conn
        except OSError as exc:
            return self._connect_failed(exc)

    def _connect_failed(self, exc):
        ssl = _ssl() if self.tls_used else None
        if ssl is not None and isinstance(exc, ssl.SSLError):
            return self._finish("tls_failed", "TLS handshake failed: %s" % _ssl_reason(exc))
        if isinstance(exc, ConnectionRefusedError):
            return self._finish("refused", "connection refused")
        if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
            if self.tls_used:
                return self._finish("tls_failed", "connection closed during the TLS handshake (%s)" % exc)
            return self._finish("aborted", "connection reset while connecting (%s)" % exc)
        if isinstance(exc, _AddressFamilyMismatch):
            return self._finish("refused", str(exc))
        if isinstance(exc, socket.gaierror):
            return self._finish("refused", "host name lookup failed: %s" % (exc.strerror or exc))
        return self._finish("refused", "connection failed: %s" % (exc.strerror or exc))

    def _connect_tcp(self, addresses, first):
        """Connect to the first address that answers; on plain TCP send ``first`` at once.

        When the handshake is already complete (on loopback it completes inside connect)
        the request goes out with the connect and saves waiting for writability; while it
        is still in progress the send fails with EAGAIN and nothing is queued.
        Returns the socket and how many bytes of ``first`` went out (0 without ``first``).
        """
        bind = self.req.get("bind_address")
        if bind:
            bind_family = _numeric_family(bind)
            addresses = [a for a in addresses if a[0] == bind_family]
            if not addresses:
                raise _AddressFamilyMismatch(
                    "bind_address %s is IPv%d, and %s has no IPv%d address"
                    % (bind, 6 if bind_family == socket.AF_INET6 else 4, self.req["host"],
                       6 if bind_family == socket.AF_INET6 else 4)
                )
        error = None
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if bind:
                    sock.bind((bind, 0))
                err = sock.connect_ex(address)
                if err not in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
                    raise OSError(err, os.strerror(err))  # OSError picks the subclass, e.g. refused
                sent = None
                if first is not None:
                    try:
                        sent = sock.send(first)
                    except (BlockingIOError, InterruptedError):
                        pass
                if sent is None:
                    yield loop.wait_io(sock, loop.WRITE)
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    if first is not None:
                        sent = sock.send(first)
                return sock, sent or 0
            except OSError as exc:
                sock.close()
                error = exc
            except BaseException:  # the deadline, or the run being closed
                sock.close()
                raise
        raise error if error is not None else OSError(errno.EHOSTUNREACH, "no address to connect to")

    def _start_tls(self, sock, context):
        req = self.req
        try:
            tls_sock = context.wrap_socket(
                sock, server_hostname=req["tls"].get("server_name") or req["host"], do_handshake_on_connect=False
            )
        except BaseException:
            sock.close()
            raise
        self.conn = _TlsConnection(tls_sock)
        yield from self.conn.handshake()
        cipher = tls_sock.cipher()
        self.result["tls"] = {
            "version": tls_sock.version(),
            "cipher": cipher[0] if cipher else None,
            "peer_subject": _peer_subject(tls_sock),
        }

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
        ssl = _ssl() if self.tls_used else None
        if ssl is not None and isinstance(err, ssl.SSLError):
            # TLS 1.3 finishes the client's handshake before the server has checked the
            # client certificate; the server's verdict arrives as an alert on first read.
            return self._finish("tls_failed", "TLS alert from peer: %s" % _ssl_reason(err))
        what = "reset" if isinstance(err, ConnectionResetError) else "closed"
        tls_version = (self.result.get("tls") or {}).get("version")
        if tls_version == "TLSv1.3" and what == "reset" and not self.conn.buffer:
            # In TLS 1.3 the server checks the client certificate after the client has
            # finished its handshake; OpenSSL-based servers then often reset the
            # connection (the request is still unread) before their alert is read.
            return self._finish(
                "tls_failed",
                "connection reset right after the TLS 1.3 handshake, before any DICOM answer; "
                "the server most likely refused the client certificate",
            )
        if self.tls_used and self.result.get("tls") and not self.conn.buffer:
            detail = "connection %s over TLS before any DICOM answer" % what
        else:
            detail = "connection %s by peer without an association answer" % what
        return self._finish("aborted", detail)

    def _run(self):
        req = self.req
        associate_rq = req.get("associate_rq") or pdu.build_associate_rq(
            req["called_ae"],
            req["calling_ae"],
            req.get("dimse", "echo"),
            req.get("identity"),
            positive_response=(req.get("identity") or {}).get("positive_response_requested", False),
        )
        conn = yield from self._connect(associate_rq)
        if conn is None:
            self._latency()
            return
        self.phase = "association"
        try:
            header = yield from conn.read_exactly(6)
            pdu_type, length = pdu.parse_header(header)
            pdu.check_answer_header(pdu_type, length)
            answer = header + (yield from conn.read_exactly(length))
        except _Closed as exc:
            self._latency()
            return self._closed(exc)
        except pdu.ProtocolError as exc:
            self._latency()
            self._finish("aborted", "protocol error: %s" % exc)
            yield from conn.send(pdu.abort_bytes(2, 1))
            return None
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
            self._finish("aborted", "protocol error: %s" % exc)
            yield from conn.send(pdu.abort_bytes(2, 6))
            return None
        self.result["outcome"] = "accepted"
        self.result["identity_response"] = accept["identity_response"]
        self.result["accepted_contexts"] = sorted(cid for cid, res in accept["contexts"].items() if res == 0)
        yield from self._dimse(conn, accept)
        yield from self._release(conn)
        return None

    def _dimse(self, conn, accept):
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
        yield from conn.send(pdu.find_rq_bytes() if dimse == "find" else pdu.echo_rq_bytes())
        matches = 0
        try:
            while True:
                status, has_data = yield from self._read_response(conn)
                category = pdu.status_category(status)
                if category == "pending" and dimse == "find":
                    matches += 1
                    if has_data:
                        # The identifier is skipped unparsed: only the count is reported.
                        yield from self._skip_dataset(conn)
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
            yield from conn.send(pdu.abort_bytes(2, 1))
            self.ended = True
        except _AbortedByPeer as exc:
            self.result["abort"] = exc.names
            self.result["detail"] = "peer aborted the association during %s" % self.phase
            self.ended = True
        if dimse == "find":
            self.result["matches"] = matches

    def _next_pdata(self, conn):
        pdu_type, data = yield from conn.read_pdu(pdu.MAX_PDATA_ACCEPTED)
        if pdu_type == pdu.PDU_ABORT:
            raise _AbortedByPeer(pdu.decode_abort(data) if len(data) == 10 else abort_unknown())
        if pdu_type != pdu.PDU_P_DATA_TF:
            raise pdu.ProtocolError("unexpected %s during %s" % (pdu.PDU_NAMES[pdu_type], self.phase))
        return list(pdu.split_pdvs(data[6:]))

    def _read_response(self, conn):
        """Read one DIMSE response's command set; return (status, has data set)."""
        command = b""
        while True:
            for _context, control, data in (yield from self._next_pdata(conn)):
                if not control & 0x01:
                    raise pdu.ProtocolError("data set fragment where a command was expected")
                command += data
                if len(command) > 65536:
                    raise pdu.ProtocolError("DIMSE command set larger than 64 KiB")
                if control & 0x02:
                    status, _field, has_data = pdu.decode_command(command)
                    return status, has_data

    def _skip_dataset(self, conn):
        while True:
            for _context, control, _data in (yield from self._next_pdata(conn)):
                if control & 0x01:
                    raise pdu.ProtocolError("command fragment inside a data set")
                if control & 0x02:
                    return

    def _release(self, conn):
        """Release politely (PS3.8 7.2) so servers log a clean end, not an abort."""
        if conn.closed or self.ended:
            return
        self.phase = "release"
        yield from conn.send(pdu.RELEASE_RQ_BYTES)
        try:
            while True:
                pdu_type, _data = yield from conn.read_pdu(pdu.MAX_PDATA_ACCEPTED)
                if pdu_type == pdu.PDU_RELEASE_RP:
                    self.result["released"] = True
                    return
                if pdu_type == pdu.PDU_ABORT:
                    return
        except (_Closed, pdu.ProtocolError):
            return


class _AddressFamilyMismatch(OSError):
    """The source address and the destination share no address family."""


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


def probe(req):
    """Run one probe; return its result dict."""
    return loop.run_jobs([Probe(req).job()], 1)[0]


def probe_many(requests, concurrency=32):
    """Run many probes with at most ``concurrency`` connections in flight; results are in
    the order of ``requests``."""
    return loop.run_jobs([Probe(req).job() for req in requests], concurrency)


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
