# -*- coding: utf-8 -*-
# Copyright: contributors to the dicomsec.hardening collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attack matrix behind dicom_audit: which associations to try against each endpoint,
and how to judge each answer.

Each check isolates one layer.  AE title checks run over the endpoint's own transport with
the audit's client certificate, so they test the AE policy and not TLS; identity checks use
the authorized AE titles, so they test identity and not AE policy; TLS checks use the
authorized AE titles and identity, so they test TLS alone.

All associations of all endpoints share one asyncio event loop and one concurrency limit, and
each host a smaller one of its own.  The
first association to an endpoint (the random-AE probe) also tells whether it is reachable;
if it is refused or no TCP connection is made, no other check is sent, so a dead endpoint
costs one connect timeout.

Every finding has a verdict: ``pass``, ``fail`` or ``inconclusive``.  An outcome that
overload produces as readily as a refusal (no answer in time, a close or reset before any
answer PDU, a transient reject, a refused connection to an endpoint that answered before, an
operation cut off) is retried once after a backoff; if it stays so the check is
inconclusive, never a pass.  A pass is only read from a conclusive answer to the check's own
request.
"""

from __future__ import annotations

__metaclass__ = type

import asyncio
import os
import time

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_pdu as pdu
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_probe as dp
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_vendor_aes as vendor

CHECKS = {
    "any_ae": ("high", "a random calling AE may associate with a random called AE"),
    "called_ae_guess": ("medium", "a random or well-known called AE title other than the configured one is accepted"),
    "no_identity": ("high", "an association without user identity is accepted"),
    "wrong_passcode": ("high", "an association with a wrong passcode or token is accepted"),
    "identity_ignored": ("medium", "a positive identity response was requested but none was received"),
    "plaintext_accepted": ("high", "plain TCP is accepted on an endpoint that should speak TLS"),
    "tls_no_client_cert": ("high", "a TLS client without a certificate is accepted"),
    "tls_legacy": ("medium", "TLS 1.0 or 1.1 is accepted"),
    "cfind_exposure": ("high", "an unknown caller without identity gets C-FIND answers"),
    "storage_exposure": ("high", "an unknown caller without identity is offered storage and it is accepted"),
    "cget_exposure": ("high", "an unknown caller without identity may C-GET"),
    "move_destination_unchecked": ("high", "a C-MOVE to an unregistered destination AE is not refused"),
    "plain_beside_tls": ("high", "a plain DICOM listener answers on the TLS endpoint's host"),
    "vendor_default_ae": ("high", "a vendor's default calling AE title is let in"),
    "authorized": ("high", "the authorized association does not succeed"),
}
CHECK_IDS = list(CHECKS)
# What runs when no checks are given: all but the two that cost an association per port or
# per title (plain_beside_tls, vendor_default_ae); select them by name.
DEFAULT_CHECKS = [c for c in CHECK_IDS if c not in ("plain_beside_tls", "vendor_default_ae")]
# Not selectable: reported only when an endpoint cannot be audited at all.
REACHABLE = ("reachable", "high")
SEVERITY_ORDER = {"high": 3, "medium": 2}
FAIL_ON = {"high": 3, "medium": 2, "never": 99}
VERDICTS = ("pass", "fail", "inconclusive")
# Associations in flight across all endpoints, and towards any one host.
DEFAULT_CONCURRENCY = 256
DEFAULT_PER_HOST_CONCURRENCY = 4

# Titles that installers and tools ship with; an attacker tries these first.
WELL_KNOWN_CALLED_AES = vendor.titles("called")
# The ports DICOM listens on by convention (104 and 11112 in PS3.15, 2762 for DICOM TLS,
# 4242 Orthanc's default, 2761 the old ISCL port), where a plain listener is looked for.
PLAIN_PORTS = [104, 11112, 4242, 2761, 2762]
DEFAULT_TIMEOUT = 5
DEFAULT_RETRY_BACKOFF = 1.0
# Out of resources (PS3.4 C.4.2.1.4, C.4.3.1.4): the server is overloaded, not refusing.
OUT_OF_RESOURCES = (0xA700, 0xA7FF)
MOVE_DESTINATION_UNKNOWN = 0xA801
# PS3.7 C.5: Refused: Not Authorized.
NOT_AUTHORIZED = 0x0124


# Spelled out: the string module imports re, a few milliseconds of every start-up.
_AE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def random_ae(prefix="X"):
    """A title no real configuration uses (upper-case letters and digits, 16 characters).

    Drawn from os.urandom: the random module's import is a millisecond of every run's
    start-up, and an unpredictable title needs nothing it offers.
    """
    return prefix + "".join(_AE_ALPHABET[byte % len(_AE_ALPHABET)] for byte in bytearray(os.urandom(15)))


def endpoint_error(index, endpoint):
    """Return why an endpoint dict is unusable, or None."""
    where = "endpoints[%d]" % index
    if not isinstance(endpoint, dict):
        return "%s must be a dict" % where
    if not endpoint.get("host"):
        return "%s needs a host" % where
    err = pdu.port_error(endpoint.get("port"), "%s.port" % where) or pdu.ae_title_error(
        endpoint.get("called_ae"), "%s.called_ae" % where
    )
    return err


def validate(config):
    """Return every problem with an audit configuration; empty when it may run."""
    errors = []
    endpoints = config.get("endpoints") or []
    if not endpoints:
        errors.append("endpoints must list at least one endpoint")
    names = set()
    for index, endpoint in enumerate(endpoints):
        err = endpoint_error(index, endpoint)
        if err:
            errors.append(err)
            continue
        name = endpoint.get("name") or "%s:%s" % (endpoint["host"], endpoint["port"])
        if name in names:
            errors.append("endpoint name %s is used twice" % name)
        names.add(name)
    for err in (
        pdu.ae_title_error(config.get("calling_ae") or "DICOMSEC-PROBE", "calling_ae"),
        pdu.identity_error(config.get("identity")),
    ):
        if err:
            errors.append(err)
    if any(e.get("tls") for e in endpoints if isinstance(e, dict)):
        err = dp.tls_options_error(dict(config.get("tls") or {}, enabled=True))
        if err:
            errors.append(err)
    unknown = [c for c in config.get("checks") or [] if c not in CHECKS]
    if unknown:
        errors.append("unknown checks: %s (known: %s)" % (", ".join(unknown), ", ".join(CHECK_IDS)))
    timeout = config.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        errors.append("timeout must be a positive number of seconds")
    err = dp.connect_timeout_error(config.get("connect_timeout"))
    if err:
        errors.append(err)
    backoff = config.get("retry_backoff", DEFAULT_RETRY_BACKOFF)
    if backoff is None or isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or backoff < 0:
        errors.append("retry_backoff must be a number of seconds, 0 or more")
    for index, port in enumerate(config.get("plain_ports") or []):
        err = pdu.port_error(port, "plain_ports[%d]" % index)
        if err:
            errors.append(err)
    for index, title in enumerate(config.get("vendor_ae_titles") or []):
        err = pdu.ae_title_error(title, "vendor_ae_titles[%d]" % index)
        if err:
            errors.append(err)
    if int(config.get("concurrency") or 0) < 1:
        errors.append("concurrency must be at least 1")
    if config.get("per_host_concurrency") is not None and int(config["per_host_concurrency"]) < 1:
        errors.append("per_host_concurrency must be at least 1")
    if config.get("fail_on", "high") not in FAIL_ON:
        errors.append("fail_on must be one of %s" % ", ".join(FAIL_ON))
    return errors


class _Context:
    """Shared, prebuilt pieces: SSL contexts and encoded requests are made once per run."""

    def __init__(self, config):
        self.config = config
        self.timeout = config.get("timeout", DEFAULT_TIMEOUT)
        self.connect_timeout = config.get("connect_timeout")
        backoff = config.get("retry_backoff")
        self.retry_backoff = DEFAULT_RETRY_BACKOFF if backoff is None else backoff
        self.calling_ae = config.get("calling_ae") or "DICOMSEC-PROBE"
        self.identity = config.get("identity") if (config.get("identity") or {}).get("type") else None
        self.tls = dict(config.get("tls") or {}, enabled=True)
        self.has_client_cert = bool(self.tls.get("cert_file"))
        self.credentials_given = bool(self.identity or self.has_client_cert or config.get("calling_ae"))
        self.checks = list(config.get("checks") or DEFAULT_CHECKS)
        self.concurrency = int(config.get("concurrency") or DEFAULT_CONCURRENCY)
        # Many endpoints fill the latency of a slow network together; one host never sees
        # more than this many of the audit's associations at once, so a small PACS is not
        # overloaded by its own audit (and does not answer with the inconclusive symptoms
        # of overload).
        self.per_host = int(config.get("per_host_concurrency") or DEFAULT_PER_HOST_CONCURRENCY)
        self._host_limits = {}
        self.plain_ports = list(config.get("plain_ports") or PLAIN_PORTS)
        extra = config.get("vendor_ae_titles") or ()
        self.called_guesses = vendor.titles("called", extra)
        self.vendor_calling = vendor.titles("calling", extra)
        # One set of random titles per run: still unknown to every server, and every
        # endpoint's request is then the same bytes, encoded once.
        self.random_called = random_ae("Q")
        self.random_calling = random_ae("R")
        self.random_finder = random_ae("F")
        self.random_destination = random_ae("D")
        # A study no archive holds: a fresh UUID-derived UID (PS3.5 B.2), so a retrieve that
        # is not refused has nothing to send.
        self.impossible_study = "2.25.%d" % int.from_bytes(os.urandom(16), "big")
        self._rq_cache = {}
        self._ssl = {}
        self.runner = dp.Runner(self.concurrency)

    def ssl_context(self, variant):
        if variant not in self._ssl:
            tls = dict(self.tls)
            if variant == "nocert":
                tls.pop("cert_file", None)
                tls.pop("key_file", None)
            elif variant == "legacy":
                tls["min_version"], tls["max_version"] = "TLSv1", "TLSv1.1"
            self._ssl[variant] = (tls, dp.make_ssl_context(tls))
        return self._ssl[variant]

    def request(self, endpoint, called_ae, calling_ae, identity=None, positive=False, dimse="none", transport=None,
                operations=(), offer=(), port=None):
        """Build a probe request; ``transport`` is None (endpoint's own), plain, tls, nocert, legacy.

        ``operations`` run in turn on the association; ``offer`` adds presentation contexts
        read from the A-ASSOCIATE-AC only (see dicom_pdu.contexts_for).
        """
        if transport is None:
            transport = "tls" if endpoint.get("tls") else "plain"
        offer = tuple(operations) + tuple(offer)
        key = (called_ae, calling_ae, dimse, _identity_key(identity), positive, offer)
        if key not in self._rq_cache:
            self._rq_cache[key] = pdu.build_associate_rq(called_ae, calling_ae, dimse, identity, positive, offer)
        req = dict(
            host=endpoint["host"],
            port=port or endpoint["port"],
            called_ae=called_ae,
            calling_ae=calling_ae,
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            dimse=dimse,
            associate_rq=self._rq_cache[key],
        )
        if operations:
            req["operations"] = list(operations)
            req["study_uid"] = self.impossible_study
            req["move_destination"] = self.random_destination
        if transport != "plain":
            tls, context = self.ssl_context(transport)
            req["tls"] = tls
            req["ssl_context"] = context
        return req

    async def run(self, req):
        """Run one probe from an endpoint's task, within its host's share; return its result."""
        limit = self._host_limits.get(req["host"])
        if limit is None:
            limit = self._host_limits[req["host"]] = asyncio.Semaphore(self.per_host)
        async with limit:
            return await self.runner.probe(req)


def _identity_key(identity):
    if not identity:
        return None
    return tuple(sorted((k, v) for k, v in identity.items() if k != "positive_response_requested"))


def _evidence(result):
    """Short evidence: what was sent and what came back, never a credential."""
    text = "called %s, calling %s" % (result["called_ae"], result["calling_ae"])
    if result.get("port_probed"):
        text = "port %s, %s" % (result["port"], text)
    text += ": %s" % result["outcome"]
    if result.get("reject"):
        text += " (%s)" % result["reject"]["reason_name"]
    if result.get("tls") and result["tls"].get("version"):
        text += " over %s" % result["tls"]["version"]
    if result.get("detail") and result["outcome"] != "accepted":
        text += " - %s" % result["detail"]
    if result.get("retried"):
        text += " [retried after %s]" % result["retried"]
    return text


def _finding(check_id, verdict, evidence):
    """A finding; ``verdict`` is True (pass), False (fail) or "inconclusive"."""
    if verdict is True or verdict is False:
        verdict = "pass" if verdict else "fail"
    if verdict not in VERDICTS:
        raise ValueError("unknown verdict %r" % verdict)
    # passed stays a bool, false for inconclusive: a consumer that only reads passed never
    # takes an unanswered check for a held defence.
    return {"id": check_id, "severity": CHECKS[check_id][0], "passed": verdict == "pass",
            "verdict": verdict, "evidence": evidence}


def _inconclusive(check_id, result, why=None):
    return _finding(check_id, "inconclusive", "no conclusive answer%s: %s" % (
        " (%s)" % why if why else "", _evidence(result)))


def _wrong_identity(identity):
    wrong = dict(identity)
    if identity["type"] == "username_passcode":
        wrong["passcode"] = identity["passcode"] + "-wrong"
    else:
        wrong["token"] = identity["token"][::-1] + "x"
    return wrong


# ---------------------------------------------------------------------------------------
# What overload can produce
# ---------------------------------------------------------------------------------------

# The operations whose answers a job's checks read; an operation of theirs cut off is as
# inconclusive as an association that got no answer.
_JOB_OPERATIONS = {
    "first": ("find", "get"),
    "unknown_caller": ("find", "get"),
    "cfind_exposure": ("find",),
    "cget_exposure": ("get",),
    "move_destination_unchecked": ("move",),
    "authorized": ("echo",),
}
# For these a close or reset without a DICOM answer is the answer: it is how a TLS listener
# turns away the plain bytes of an A-ASSOCIATE-RQ, every time (see docs/verification.md).
_CLOSE_IS_AN_ANSWER = ("plaintext_accepted", "plain_beside_tls")


def association_symptom(result, check_id=None):
    """Why the association's answer is one overload can produce, or None when conclusive."""
    outcome = result["outcome"]
    if check_id == "plain_beside_tls" and (outcome == "refused" or (outcome == "timeout" and not result.get("connected"))):
        # On a port of its own, a refused or unanswered connect is the answer: no listener
        # is reachable there, as for the first association's reachability.
        return None
    if outcome == "timeout":
        if result.get("connected"):
            return "no answer in time"
        return "no TCP connection in time"
    if outcome == "refused":
        return "connection refused"
    if outcome == "aborted" and result.get("no_answer") and check_id not in _CLOSE_IS_AN_ANSWER:
        return "connection %s without any answer PDU" % result["no_answer"]
    # The presentation service provider's reasons (temporary-congestion,
    # local-limit-exceeded: PS3.8 Table 9-21) are load; a transient reject from the service
    # user or ACSE is a decision (pynetdicom refuses a bad identity with 2/2/1).
    if outcome == "rejected" and (result.get("reject") or {}).get("source") == 3:
        return "reject for load (%s)" % result["reject"]["reason_name"]
    return None


def _operation(result, name):
    for operation in result.get("operations") or ([result["operation"]] if result.get("operation") else []):
        if operation["name"] == pdu.OPERATIONS[name]["name"]:
            return operation
    return None


def operation_symptom(result, name):
    """Why an accepted association's operation ``name`` has no conclusive answer, or None."""
    if result["outcome"] != "accepted":
        return None
    operation = _operation(result, name)
    if operation is None:
        return None
    # not_run is no symptom: an earlier operation ended the association with an answer, and
    # the check whose operation did not run gets an association of its own.
    if operation["result"] in ("timeout", "closed"):
        return "%s %s" % (operation["name"], operation["result"].replace("_", " "))
    status = operation.get("status")
    if status is not None and OUT_OF_RESOURCES[0] <= status <= OUT_OF_RESOURCES[1]:
        return "%s out of resources (status 0x%04x)" % (operation["name"], status)
    return None


def symptom(job_id, result):
    """Why a job's result cannot settle its checks yet, or None."""
    if job_id == "tls_legacy" and (result.get("tls") or {}).get("version"):
        return None  # the handshake happened: that is the answer
    found = association_symptom(result, job_id)
    if found:
        return found
    for name in _JOB_OPERATIONS.get(job_id, ()):
        found = operation_symptom(result, name)
        if found:
            return found
    return None


def _better(first, second, job_id):
    """The retry's result, unless it is worse than the first at the association level."""
    if association_symptom(second, job_id) and not association_symptom(first, job_id):
        return first
    return second


async def _retry(ctx, jobs, results, report):
    """Run once more, after the backoff, every job whose result overload can produce."""
    again = [index for index, (job_id, dummy) in enumerate(jobs) if symptom(job_id, results[index])]
    if not again:
        return results
    results = list(results)
    await asyncio.sleep(ctx.retry_backoff)
    retried = await asyncio.gather(*(ctx.run(jobs[index][1]) for index in again))
    report["associations"] += len(again)
    report["retries"] = report.get("retries", 0) + len(again)
    for index, second in zip(again, retried):
        job_id = jobs[index][0]
        why = symptom(job_id, results[index])
        chosen = _better(results[index], second, job_id)
        chosen["retried"] = "%ss (first: %s)" % (ctx.retry_backoff, why)
        still = symptom(job_id, chosen)
        if still:
            chosen["inconclusive"] = ("%s, and again after %ss" % (still, ctx.retry_backoff) if still == why
                                      else "%s, then %s after %ss" % (why, still, ctx.retry_backoff))
        results[index] = chosen
    return results


async def _run_jobs(ctx, jobs, report, retry=True):
    """Run jobs; a result that overload can produce is retried once after the backoff.

    A result still inconclusive after its retry carries ``inconclusive`` (why), which judge
    turns into an inconclusive finding.
    """
    results = list(await asyncio.gather(*(ctx.run(req) for dummy, req in jobs)))
    report["associations"] += len(jobs)
    if retry:
        results = await _retry(ctx, jobs, results, report)
    by_check = {}
    for (check_id, dummy), result in zip(jobs, results):
        by_check.setdefault(check_id, []).append(result)
    return by_check


# ---------------------------------------------------------------------------------------
# One endpoint
# ---------------------------------------------------------------------------------------


async def audit_endpoint(ctx, endpoint):
    """Run the selected checks against one endpoint; return its report dict.

    Associations go out in rounds (all endpoints' rounds share the loop).  A finding is
    read from an association made for another check only where that association proves
    it: an acceptance is a fact about what the endpoint lets in, so a fail may be inferred
    from any association whose request carries no more than the check's own request would
    (here: no identity).  A pass is never inferred; a rejection is read only by the check
    whose request it was.  docs/verification.md sets out each inference.
    """
    name = endpoint.get("name") or "%s:%s" % (endpoint["host"], endpoint["port"])
    called = endpoint.get("called_ae") or "ANY-SCP"
    tls_endpoint = bool(endpoint.get("tls"))
    report = {
        "name": name,
        "host": endpoint["host"],
        "port": endpoint["port"],
        "tls": tls_endpoint,
        "called_ae": called,
        "findings": [],
        "skipped": [],
        "associations": 0,
        "retries": 0,
    }
    checks = ctx.checks

    def skip(check_id, reason):
        if check_id in checks:
            report["skipped"].append({"id": check_id, "reason": reason})

    # 1. The random-AE association doubles as the reachability test.  It also carries what
    #    the unknown-caller checks ask (the C-FIND, the C-GET, the storage offer): a random
    #    caller without identity is exactly the caller those checks are about, so an
    #    accepted association answers them all.
    unknown_ops = [op for op, check in (("find", "cfind_exposure"), ("get", "cget_exposure")) if check in checks]
    unknown_offer = ("storage",) if "storage_exposure" in checks else ()
    first_req = ctx.request(endpoint, ctx.random_called, ctx.random_calling, operations=unknown_ops, offer=unknown_offer)
    first = await ctx.run(first_req)
    report["associations"] += 1
    if first["outcome"] == "refused" or (first["outcome"] == "timeout" and not first.get("connected")):
        # Nothing listens, or nothing answers a SYN: TCP itself has retransmitted within
        # the connect timeout, and a dead endpoint costs no more than that.
        report["findings"].append(_reachable("fail", "endpoint cannot be audited: %s" % _evidence(first)))
        for check_id in checks:
            skip(check_id, "endpoint unreachable")
        return report
    if symptom("first", first):
        first = (await _retry(ctx, [("first", first_req)], [first], report))[0]
        if first.get("inconclusive") and association_symptom(first, "first"):
            report["findings"].append(_reachable(
                "inconclusive", "endpoint cannot be audited, the weakest request got no conclusive answer: %s"
                % _evidence(first)))
            for check_id in checks:
                skip(check_id, "endpoint gave no conclusive answer")
            return report

    findings = {}
    if "any_ae" in checks:
        findings["any_ae"] = _finding("any_ae", first["outcome"] != "accepted", _evidence(first))
    if first["outcome"] == "accepted":
        # The first association is the weakest request of the matrix: unknown titles on
        # both sides and no user identity.  Its acceptance is itself the fact more checks
        # look for, so they need no association of their own.
        if "called_ae_guess" in checks:
            findings["called_ae_guess"] = _finding(
                "called_ae_guess", False,
                "the random called AE %s was accepted even from a random calling AE (%s), so the called AE "
                "is not checked and every guess would be too" % (first["called_ae"], _evidence(first)),
            )
        if "no_identity" in checks:
            findings["no_identity"] = _finding(
                "no_identity", False,
                "accepted without user identity, even from unknown AE titles (%s)" % _evidence(first),
            )
        if "vendor_default_ae" in checks:
            findings["vendor_default_ae"] = _finding(
                "vendor_default_ae", False,
                "even the random calling AE %s was accepted (%s), so the calling AE is not checked and every "
                "vendor default is let in" % (first["calling_ae"], _evidence(first)),
            )

    jobs = []  # (check id, request)
    identity = ctx.identity
    authorized_identity = dict(identity) if identity else None
    guess_pending = "called_ae_guess" in checks and "called_ae_guess" not in findings
    no_identity_pending = "no_identity" in checks and "no_identity" not in findings
    # The random-called-AE shortcut (accepted: the called AE is not checked, no guessing
    # needed) is first sent without identity when no_identity is still open: accepted, it
    # answers both checks at once, since it is the authorized calling AE without identity.
    # Rejected, it proves nothing, and the next round asks the two questions separately.

    def random_with_identity():
        return ctx.request(endpoint, ctx.random_called, ctx.calling_ae, authorized_identity)

    def no_identity_request():
        return ctx.request(endpoint, called, ctx.calling_ae)

    if guess_pending and no_identity_pending:
        jobs.append(("called_ae_random_no_identity", ctx.request(endpoint, ctx.random_called, ctx.calling_ae)))
    elif guess_pending:
        jobs.append(("called_ae_random", random_with_identity()))
    elif no_identity_pending:
        jobs.append(("no_identity", no_identity_request()))

    if "wrong_passcode" in checks:
        if identity and identity["type"] != "username":
            jobs.append(("wrong_passcode", ctx.request(endpoint, called, ctx.calling_ae, _wrong_identity(identity))))
        else:
            skip("wrong_passcode", "no passcode or token given in identity")

    authorized_request = None
    if "authorized" in checks and ctx.credentials_given:
        authorized_request = ctx.request(endpoint, called, ctx.calling_ae, authorized_identity, dimse="echo")

    if "identity_ignored" in checks:
        probe_identity = authorized_identity or {"type": "username", "username": ctx.calling_ae.strip().lower()}
        if authorized_request is not None and authorized_identity:
            # The identity_ignored request is the authorized one with the positive-response
            # flag set (dimse none and echo propose the same context), so its association
            # also asks the C-ECHO.  Read from the A-ASSOCIATE-AC, identity_ignored is
            # judged exactly as before; authorized passes from it only when accepted with
            # C-ECHO success, otherwise the plain authorized request is sent after all.
            jobs.append(("identity_and_authorized", ctx.request(
                endpoint, called, ctx.calling_ae, probe_identity, positive=True, dimse="echo")))
            authorized_request = None
        else:
            jobs.append(("identity_ignored", ctx.request(endpoint, called, ctx.calling_ae, probe_identity, positive=True)))

    for check_id, transport in (("plaintext_accepted", "plain"), ("tls_no_client_cert", "nocert"), ("tls_legacy", "legacy")):
        if check_id not in checks:
            continue
        if not tls_endpoint:
            skip(check_id, "endpoint is not marked tls")
        elif check_id == "tls_no_client_cert" and not ctx.has_client_cert:
            skip(check_id, "no tls.cert_file given, so the authorized case has no certificate either")
        else:
            jobs.append((check_id, ctx.request(endpoint, called, ctx.calling_ae, authorized_identity, transport=transport)))

    unknown_checks = [c for c in ("cfind_exposure", "cget_exposure", "storage_exposure") if c in checks]
    if unknown_checks:
        if first["outcome"] == "accepted":
            for check_id in unknown_checks:
                if _not_run(first, check_id):
                    jobs.append((check_id, ctx.request(
                        endpoint, ctx.random_called, ctx.random_calling, operations=[_UNKNOWN_OPS[check_id]])))
                else:
                    findings[check_id] = judge(check_id, [first], ctx)
        else:
            # The first was refused on a random called AE, which proves nothing about the
            # configured one: ask again there, still as an unknown caller.
            jobs.append(("unknown_caller", ctx.request(
                endpoint, called, ctx.random_finder, operations=unknown_ops, offer=unknown_offer)))

    if "move_destination_unchecked" in checks:
        # Asked as the authorized client: a destination check only matters to a caller who
        # may C-MOVE at all, and an unknown caller is usually stopped before it.
        jobs.append(("move_destination_unchecked", ctx.request(
            endpoint, called, ctx.calling_ae, authorized_identity, operations=["move"])))

    if "plain_beside_tls" in checks:
        ports = [p for p in ctx.plain_ports if p != endpoint["port"]]
        if not tls_endpoint:
            skip("plain_beside_tls", "endpoint is not marked tls")
        elif not ports:
            skip("plain_beside_tls", "no port other than the endpoint's own to try")
        else:
            for port in ports:
                jobs.append(("plain_beside_tls", ctx.request(
                    endpoint, called, ctx.calling_ae, authorized_identity, transport="plain", port=port)))

    if "vendor_default_ae" in checks and "vendor_default_ae" not in findings:
        for title in ctx.vendor_calling:
            if title != ctx.calling_ae.strip():
                jobs.append(("vendor_default_ae", ctx.request(endpoint, called, title)))

    if "authorized" in checks and not ctx.credentials_given:
        skip("authorized", "no credentials given (calling_ae, identity or tls.cert_file)")
    elif authorized_request is not None:
        jobs.append(("authorized", authorized_request))

    by_check = await _run_jobs(ctx, jobs, report)
    for result in by_check.get("plain_beside_tls", []):
        result["port_probed"] = True

    # Second round: what the first one left open.
    jobs = []
    if "unknown_caller" in by_check:
        result = by_check.pop("unknown_caller")[0]
        for check_id in unknown_checks:
            if _not_run(result, check_id):
                jobs.append((check_id, ctx.request(endpoint, called, ctx.random_finder, operations=[_UNKNOWN_OPS[check_id]])))
            else:
                by_check[check_id] = [result]
    if "identity_and_authorized" in by_check:
        combined = by_check.pop("identity_and_authorized")
        by_check["identity_ignored"] = combined
        if _operation_succeeded(combined[0]):
            by_check["authorized"] = combined
        else:
            # Never fail the authorized check on a request it would not have sent.
            jobs.append(("authorized", ctx.request(endpoint, called, ctx.calling_ae, authorized_identity, dimse="echo")))
    if "called_ae_random_no_identity" in by_check:
        random_result = by_check.pop("called_ae_random_no_identity")[0]
        if random_result["outcome"] == "accepted":
            findings["called_ae_guess"] = _random_called_accepted(random_result)
            findings["no_identity"] = _finding(
                "no_identity", False,
                "accepted without user identity on the random called AE %s (%s)"
                % (random_result["called_ae"], _evidence(random_result)),
            )
        else:
            jobs.append(("no_identity", no_identity_request()))
            if authorized_identity:
                jobs.append(("called_ae_random", random_with_identity()))
            else:
                # Without identity the request just rejected is the shortcut itself.
                by_check["called_ae_random"] = [random_result]
    if jobs:
        by_check.update((await _run_jobs(ctx, jobs, report)))

    if "called_ae_random" in by_check:
        random_result = by_check.pop("called_ae_random")[0]
        if random_result["outcome"] == "accepted":
            findings["called_ae_guess"] = _random_called_accepted(random_result)
        else:
            guesses = [(
                "called_ae_guess", ctx.request(endpoint, guess, ctx.calling_ae, authorized_identity)
            ) for guess in ctx.called_guesses if guess != called.strip()]
            by_check.update((await _run_jobs(ctx, guesses, report)))

    for check_id, results in by_check.items():
        findings[check_id] = judge(check_id, results, ctx)
    report["findings"] = [findings[c] for c in checks if c in findings]
    return report


# The operation each unknown-caller check reads (storage_exposure reads the AC alone).
_UNKNOWN_OPS = {"cfind_exposure": "find", "cget_exposure": "get"}


def _not_run(result, check_id):
    """Whether the check's operation was left out because an earlier one ended the association
    (Orthanc aborts an unknown caller's C-FIND, and the C-GET behind it never goes out)."""
    name = _UNKNOWN_OPS.get(check_id)
    return bool(name) and result["outcome"] == "accepted" and (_operation(result, name) or {}).get("result") == "not_run"


def _reachable(verdict, evidence):
    return {"id": REACHABLE[0], "severity": REACHABLE[1], "passed": False, "verdict": verdict, "evidence": evidence}


def _operation_succeeded(result):
    """Whether the association was accepted and its operation succeeded."""
    return result["outcome"] == "accepted" and bool((result.get("operation") or {}).get("succeeded"))


def _operation_text(operation):
    text = "%s %s" % (operation["name"], operation["result"].replace("_", " "))
    if operation["status"] is not None:
        text += " (status 0x%04x)" % operation["status"]
    if operation.get("detail"):
        text += ": %s" % operation["detail"]
    return text


def _random_called_accepted(result):
    return _finding(
        "called_ae_guess", False,
        "the random called AE %s was accepted, so the called AE is not checked and every guess "
        "would be too" % result["called_ae"],
    )


# ---------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------


def _judge_many(check_id, results, accepted_text, passed_text):
    """A check of several associations: fail on any acceptance, else inconclusive when any
    stayed unanswered, else pass."""
    accepted = [r for r in results if r["outcome"] == "accepted"]
    if accepted:
        return _finding(check_id, False, accepted_text(accepted))
    unanswered = [r for r in results if r.get("inconclusive")]
    if unanswered:
        return _finding(check_id, "inconclusive", "%d of %d without a conclusive answer: %s" % (
            len(unanswered), len(results), "; ".join("%s (%s)" % (_evidence(r), r["inconclusive"]) for r in unanswered)))
    outcomes = sorted(set(
        r["outcome"] + ("/" + r["reject"]["reason_name"] if r.get("reject") else "") for r in results
    ))
    return _finding(check_id, True, passed_text(len(results), ", ".join(outcomes)))


def judge(check_id, results, ctx):
    """Turn the probe results of one check into a finding."""
    if check_id == "called_ae_guess":
        return _judge_many(
            check_id, results,
            lambda acc: "accepted guessed called AE titles: %s" % ", ".join(r["called_ae"] for r in acc),
            lambda count, outcomes: "%d guesses, none accepted (%s)" % (count, outcomes))
    if check_id == "vendor_default_ae":
        return _judge_many(
            check_id, results,
            lambda acc: "accepted vendor default calling AE titles: %s (called %s)" % (
                ", ".join(r["calling_ae"] for r in acc), acc[0]["called_ae"]),
            lambda count, outcomes: "%d vendor default calling AE titles, none accepted (%s)" % (count, outcomes))
    if check_id == "plain_beside_tls":
        return _judge_plain_beside(results)
    result = results[0]
    if check_id == "storage_exposure":
        # Read from the A-ASSOCIATE-AC alone, so only the association can be inconclusive.
        if result.get("inconclusive") and association_symptom(result):
            return _inconclusive(check_id, result, result["inconclusive"])
        return _judge_storage(result)
    if result.get("inconclusive"):
        return _inconclusive(check_id, result, result["inconclusive"])
    outcome = result["outcome"]
    if check_id == "identity_ignored":
        if outcome != "accepted":
            return _finding(check_id, True, "identity with positive response requested: %s" % _evidence(result))
        present = (result.get("identity_response") or {}).get("present")
        if present:
            return _finding(check_id, True, "accepted with a user identity server response")
        return _finding(check_id, False, "accepted, but positive response requested and none received")
    if check_id == "tls_legacy":
        # The handshake is the question; what DICOM does afterwards does not matter.
        version = (result.get("tls") or {}).get("version")
        if version:
            return _finding(check_id, False, "TLS handshake succeeded with %s (%s)" % (version, outcome))
        return _finding(check_id, True, "TLS 1.0/1.1 offered: %s" % _evidence(result))
    if check_id == "cfind_exposure":
        return _judge_query(check_id, result, "find")
    if check_id == "cget_exposure":
        return _judge_query(check_id, result, "get")
    if check_id == "move_destination_unchecked":
        return _judge_move(result, ctx)
    if check_id == "plaintext_accepted":
        if outcome == "accepted":
            return _finding(check_id, False, _evidence(result))
        if result.get("no_answer"):
            return _finding(check_id, True, "no DICOM answer to plain TCP, the connection was %s as a TLS listener "
                            "does (%s)" % (result["no_answer"], _evidence(result)))
        return _finding(check_id, True, _evidence(result))
    if check_id == "authorized":
        ok = _operation_succeeded(result)
        text = _evidence(result)
        if outcome == "accepted":
            text += "; %s" % (_operation_text(result["operation"]) if result.get("operation") else "no operation")
        return _finding(check_id, ok, text)
    # any_ae, no_identity, wrong_passcode, tls_no_client_cert
    return _finding(check_id, outcome != "accepted", _evidence(result))


def _judge_storage(result):
    check_id = "storage_exposure"
    if result["outcome"] != "accepted":
        return _finding(check_id, True, "storage offered: %s" % _evidence(result))
    accepted = [pdu.STORAGE_CONTEXT_IDS[cid] for cid in result.get("accepted_contexts") or [] if cid in pdu.STORAGE_CONTEXT_IDS]
    if accepted:
        return _finding(
            check_id, False,
            "calling %s (unknown, no identity) was offered storage and the A-ASSOCIATE-AC accepted %s; "
            "nothing was stored" % (result["calling_ae"], ", ".join(accepted)))
    return _finding(check_id, True, "association accepted, but none of the %d storage contexts offered (%s) was accepted"
                    % (len(pdu.STORAGE_CONTEXT_IDS), ", ".join(name for name, dummy in pdu.STORAGE_EXPOSURE_CLASSES)))


def _judge_query(check_id, result, name):
    """cfind_exposure and cget_exposure: an unknown caller's query or retrieve."""
    if result["outcome"] != "accepted":
        return _finding(check_id, True, _evidence(result))
    operation = _operation(result, name)
    label = pdu.OPERATIONS[name]["name"]
    if operation is None:
        return _finding(check_id, "inconclusive", "association accepted, and the %s was not sent" % label)
    if name == "find" and (operation["matches"] or operation["result"] in ("success", "warning")):
        return _finding(
            check_id, False,
            "C-FIND from calling %s answered (%s) with %d matching studies"
            % (result["calling_ae"], _operation_text(operation), operation["matches"]),
        )
    if name == "get" and (operation.get("pending") or operation["result"] in ("success", "warning")):
        return _finding(
            check_id, False,
            "C-GET of a study that cannot exist from calling %s answered %s: the retrieve ran for an "
            "unknown caller" % (result["calling_ae"], _operation_text(operation)),
        )
    if operation["result"] in dp.REFUSED_OPERATION_RESULTS:
        return _finding(check_id, True, "association accepted, then the %s was refused (%s)" % (label, _operation_text(operation)))
    # A garbled answer is no evidence that the request is refused.
    return _finding(
        check_id, False,
        "association accepted, and the %s got no conclusive answer (%s)" % (label, _operation_text(operation)),
    )


def _judge_move(result, ctx):
    check_id = "move_destination_unchecked"
    if result["outcome"] != "accepted":
        return _finding(check_id, True, "the authorized caller cannot ask for a C-MOVE here: %s" % _evidence(result))
    operation = _operation(result, "move")
    if operation is None:
        return _finding(check_id, "inconclusive", "association accepted, and the C-MOVE was not sent")
    where = "C-MOVE of a study that cannot exist to the unregistered destination %s" % ctx.random_destination
    status = operation.get("status")
    if operation["result"] in ("success", "warning") or operation.get("pending"):
        subops = operation.get("suboperations") or {}
        return _finding(check_id, False, "%s answered %s with %s completed sub-operations: a destination that is not "
                        "registered is not refused, so real studies would go to any address that asks"
                        % (where, _operation_text(operation), subops.get("completed")))
    if status == MOVE_DESTINATION_UNKNOWN:
        return _finding(check_id, True, "%s refused: move destination unknown (status 0x%04x)" % (where, status))
    if operation["result"] in ("context_rejected", "aborted") or status == NOT_AUTHORIZED:
        return _finding(check_id, True, "the C-MOVE itself is refused to the authorized caller (%s)" % _operation_text(operation))
    if operation["result"] == "failure":
        # Refused without naming the destination (Orthanc answers 0xC000 and logs an unknown
        # modality): the check's own request was refused, which is what it asks. Whether a study
        # that exists would go out is not something a read-only check can try; the evidence says so.
        return _finding(check_id, True, "%s refused (%s), without saying whether for the destination or the study"
                        % (where, _operation_text(operation)))
    # A garbled or cut-off answer is no evidence either way.
    return _finding(check_id, "inconclusive", "%s answered %s, which is neither success nor a refusal"
                    % (where, _operation_text(operation)))


def _judge_plain_beside(results):
    check_id = "plain_beside_tls"
    listeners, unanswered, quiet = [], [], []
    for result in results:
        if result["outcome"] in ("accepted", "rejected") or result.get("abort"):
            listeners.append(result)
        elif result.get("inconclusive"):
            unanswered.append(result)
        else:
            quiet.append(result)
    if listeners:
        return _finding(check_id, False, "plain DICOM answers on port %s: %s" % (
            ", ".join(str(r["port"]) for r in listeners), "; ".join(_evidence(r) for r in listeners)))
    if unanswered:
        return _finding(check_id, "inconclusive", "no conclusive answer on port %s: %s" % (
            ", ".join(str(r["port"]) for r in unanswered),
            "; ".join("%s (%s)" % (_evidence(r), r["inconclusive"]) for r in unanswered)))
    return _finding(check_id, True, "no plain DICOM listener on port %s (%s)" % (
        ", ".join(str(r["port"]) for r in quiet),
        ", ".join(sorted(set(r["outcome"] + ("/" + r["no_answer"] if r.get("no_answer") else "") for r in quiet)))))


def audit(config):
    """Run an audit; return (endpoint reports, summary)."""
    ctx = _Context(config)
    start = time.perf_counter()
    reports = dp.run(_audit_all(ctx, config["endpoints"]))
    elapsed = time.perf_counter() - start
    return reports, summarize(reports, elapsed, config.get("fail_on", "high"),
                              config.get("fail_on_inconclusive", True))


async def _audit_all(ctx, endpoints):
    return list(await asyncio.gather(*(audit_endpoint(ctx, endpoint) for endpoint in endpoints)))


def summarize(reports, elapsed, fail_on="high", fail_on_inconclusive=True):
    """Totals; ``failing`` names every finding that fails the task: a failed one at or above
    ``fail_on`` and, with ``fail_on_inconclusive``, an inconclusive one at or above it too."""
    failed = {"high": 0, "medium": 0}
    checks = passed = inconclusive = associations = retries = 0
    unreachable = []
    failing = []
    inconclusive_checks = []
    for report in reports:
        associations += report["associations"]
        retries += report.get("retries", 0)
        for finding in report["findings"]:
            label = "%s: %s" % (report["name"], finding["id"])
            if finding["id"] == REACHABLE[0]:
                unreachable.append(report["name"])
            checks += 1
            verdict = finding.get("verdict") or ("pass" if finding["passed"] else "fail")
            counts = SEVERITY_ORDER[finding["severity"]] >= FAIL_ON[fail_on]
            if verdict == "pass":
                passed += 1
            elif verdict == "inconclusive":
                inconclusive += 1
                inconclusive_checks.append(label)
                if counts and fail_on_inconclusive:
                    failing.append(label)
            else:
                failed[finding["severity"]] += 1
                if counts:
                    failing.append(label)
    return {
        "endpoints": len(reports),
        "checks": checks,
        "passed": passed,
        "failed": failed,
        "inconclusive": inconclusive,
        "inconclusive_checks": inconclusive_checks,
        "unreachable": unreachable,
        "associations": associations,
        "retries": retries,
        "elapsed_ms": round(elapsed * 1000.0, 1),
        "failing": failing,
    }
