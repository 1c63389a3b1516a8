# -*- coding: utf-8 -*-
# Copyright: contributors to the dicomsec.hardening collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attack matrix behind dicom_audit: which associations to try against each endpoint,
and how to judge each answer.

Each check isolates one layer.  AE title checks run over the endpoint's own transport with
the audit's client certificate, so they test the AE policy and not TLS; identity checks use
the authorized AE titles, so they test identity and not AE policy; TLS checks use the
authorized AE titles and identity, so they test TLS alone.

All associations of all endpoints share one asyncio event loop and one concurrency limit.  The
first association to an endpoint (the random-AE probe) also tells whether it is reachable;
if it is refused or times out, no other check is sent, so a dead endpoint costs one timeout.
"""

from __future__ import annotations

__metaclass__ = type

import asyncio
import os
import time

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_pdu as pdu
from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_probe as dp

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
    "authorized": ("high", "the authorized association does not succeed"),
}
CHECK_IDS = list(CHECKS)
# Not selectable: reported only when an endpoint cannot be audited at all.
REACHABLE = ("reachable", "high")
SEVERITY_ORDER = {"high": 3, "medium": 2}
FAIL_ON = {"high": 3, "medium": 2, "never": 99}

# Titles that installers and tools ship with; an attacker tries these first.
WELL_KNOWN_CALLED_AES = [
    "ANY-SCP",
    "ECHOSCU",
    "STORESCP",
    "STORESCU",
    "ORTHANC",
    "DCM4CHEE",
    "PACS",
    "DICOM",
]
INCONCLUSIVE = ("refused", "timeout")


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
    timeout = config.get("timeout", 5)
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        errors.append("timeout must be a positive number of seconds")
    if int(config.get("concurrency") or 0) < 1:
        errors.append("concurrency must be at least 1")
    if config.get("fail_on", "high") not in FAIL_ON:
        errors.append("fail_on must be one of %s" % ", ".join(FAIL_ON))
    return errors


class _Context:
    """Shared, prebuilt pieces: SSL contexts and encoded requests are made once per run."""

    def __init__(self, config):
        self.config = config
        self.timeout = config.get("timeout", 5)
        self.calling_ae = config.get("calling_ae") or "DICOMSEC-PROBE"
        self.identity = config.get("identity") if (config.get("identity") or {}).get("type") else None
        self.tls = dict(config.get("tls") or {}, enabled=True)
        self.has_client_cert = bool(self.tls.get("cert_file"))
        self.credentials_given = bool(self.identity or self.has_client_cert or config.get("calling_ae"))
        self.checks = list(config.get("checks") or CHECK_IDS)
        self.concurrency = int(config.get("concurrency") or 32)
        # One set of random titles per run: still unknown to every server, and every
        # endpoint's request is then the same bytes, encoded once.
        self.random_called = random_ae("Q")
        self.random_calling = random_ae("R")
        self.random_finder = random_ae("F")
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

    def request(self, endpoint, called_ae, calling_ae, identity=None, positive=False, dimse="none", transport=None):
        """Build a probe request; ``transport`` is None (endpoint's own), plain, tls, nocert, legacy."""
        if transport is None:
            transport = "tls" if endpoint.get("tls") else "plain"
        key = (called_ae, calling_ae, dimse, _identity_key(identity), positive)
        if key not in self._rq_cache:
            self._rq_cache[key] = pdu.build_associate_rq(called_ae, calling_ae, dimse, identity, positive)
        req = dict(
            host=endpoint["host"],
            port=endpoint["port"],
            called_ae=called_ae,
            calling_ae=calling_ae,
            timeout=self.timeout,
            dimse=dimse,
            associate_rq=self._rq_cache[key],
        )
        if transport != "plain":
            tls, context = self.ssl_context(transport)
            req["tls"] = tls
            req["ssl_context"] = context
        return req

    async def run(self, req):
        """Run one probe from an endpoint's task; return its result."""
        return await self.runner.probe(req)


def _identity_key(identity):
    if not identity:
        return None
    return tuple(sorted((k, v) for k, v in identity.items() if k != "positive_response_requested"))


def _evidence(result):
    """Short evidence: what was sent and what came back, never a credential."""
    text = "called %s, calling %s: %s" % (result["called_ae"], result["calling_ae"], result["outcome"])
    if result.get("reject"):
        text += " (%s)" % result["reject"]["reason_name"]
    if result.get("tls") and result["tls"].get("version"):
        text += " over %s" % result["tls"]["version"]
    if result.get("detail") and result["outcome"] != "accepted":
        text += " - %s" % result["detail"]
    return text


def _finding(check_id, passed, evidence):
    return {"id": check_id, "severity": CHECKS[check_id][0], "passed": bool(passed), "evidence": evidence}


def _wrong_identity(identity):
    wrong = dict(identity)
    if identity["type"] == "username_passcode":
        wrong["passcode"] = identity["passcode"] + "-wrong"
    else:
        wrong["token"] = identity["token"][::-1] + "x"
    return wrong


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
    }
    checks = ctx.checks

    def skip(check_id, reason):
        if check_id in checks:
            report["skipped"].append({"id": check_id, "reason": reason})

    # 1. The random-AE association doubles as the reachability test.  When C-FIND exposure
    #    is to be checked it also asks the query: a random caller without identity is
    #    exactly the caller that check is about, so an accepted association answers both.
    first_dimse = "find" if "cfind_exposure" in checks else "none"
    first = await ctx.run(ctx.request(endpoint, ctx.random_called, ctx.random_calling, dimse=first_dimse))
    report["associations"] += 1
    if first["outcome"] in INCONCLUSIVE:
        report["findings"].append(
            {"id": REACHABLE[0], "severity": REACHABLE[1], "passed": False,
             "evidence": "endpoint cannot be audited: %s" % _evidence(first)}
        )
        for check_id in checks:
            skip(check_id, "endpoint unreachable")
        return report
    findings = {}
    if "any_ae" in checks:
        findings["any_ae"] = _finding("any_ae", first["outcome"] != "accepted", _evidence(first))
    if first["outcome"] == "accepted":
        # The first association is the weakest request of the matrix: unknown titles on
        # both sides and no user identity.  Its acceptance is itself the fact two more
        # checks look for, so they need no association of their own.
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

    if "cfind_exposure" in checks:
        if first["outcome"] == "accepted":
            findings["cfind_exposure"] = judge("cfind_exposure", [first], ctx)
        else:
            jobs.append(("cfind_exposure", ctx.request(endpoint, called, ctx.random_finder, dimse="find")))

    if "authorized" in checks and not ctx.credentials_given:
        skip("authorized", "no credentials given (calling_ae, identity or tls.cert_file)")
    elif authorized_request is not None:
        jobs.append(("authorized", authorized_request))

    by_check = await _run_jobs(ctx, jobs, report)

    # Second round: what the first one left open.
    jobs = []
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
            ) for guess in WELL_KNOWN_CALLED_AES if guess != called.strip()]
            by_check.update((await _run_jobs(ctx, guesses, report)))

    for check_id, results in by_check.items():
        findings[check_id] = judge(check_id, results, ctx)
    report["findings"] = [findings[c] for c in checks if c in findings]
    return report


def _operation_succeeded(result):
    """Whether the association was accepted and its operation succeeded."""
    return result["outcome"] == "accepted" and bool((result.get("operation") or {}).get("succeeded"))


def _operation_text(operation):
    text = "%s %s" % (operation["name"], operation["result"])
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


async def _run_jobs(ctx, jobs, report):
    results = await asyncio.gather(*(ctx.run(req) for dummy, req in jobs))
    report["associations"] += len(jobs)
    by_check = {}
    for (check_id, dummy), result in zip(jobs, results):
        by_check.setdefault(check_id, []).append(result)
    return by_check


def judge(check_id, results, ctx):
    """Turn the probe results of one check into a finding."""
    if check_id == "called_ae_guess":
        accepted = [r["called_ae"] for r in results if r["outcome"] == "accepted"]
        if accepted:
            return _finding(check_id, False, "accepted guessed called AE titles: %s" % ", ".join(accepted))
        outcomes = sorted(set(
            r["outcome"] + ("/" + r["reject"]["reason_name"] if r.get("reject") else "") for r in results
        ))
        return _finding(check_id, True, "%d guesses, none accepted (%s)" % (len(results), ", ".join(outcomes)))
    result = results[0]
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
        operation = result.get("operation")
        if outcome != "accepted":
            return _finding(check_id, True, _evidence(result))
        if operation and (operation["matches"] or operation["result"] in ("success", "warning")):
            return _finding(
                check_id, False,
                "C-FIND from calling %s answered (%s) with %d matching studies"
                % (result["calling_ae"], _operation_text(operation), operation["matches"]),
            )
        if operation and operation["result"] in dp.REFUSED_OPERATION_RESULTS:
            return _finding(check_id, True, "association accepted, then the C-FIND was refused (%s)" % _operation_text(operation))
        # A close, a timeout or garbage is no evidence that the query is refused.
        return _finding(
            check_id, False,
            "association accepted, and the C-FIND got no conclusive answer (%s)"
            % (_operation_text(operation) if operation else "not sent"),
        )
    if check_id == "authorized":
        ok = _operation_succeeded(result)
        text = _evidence(result)
        if outcome == "accepted":
            text += "; %s" % (_operation_text(result["operation"]) if result.get("operation") else "no operation")
        return _finding(check_id, ok, text)
    # any_ae, no_identity, wrong_passcode, plaintext_accepted, tls_no_client_cert
    return _finding(check_id, outcome != "accepted", _evidence(result))


def audit(config):
    """Run an audit; return (endpoint reports, summary)."""
    ctx = _Context(config)
    start = time.perf_counter()
    reports = dp.run(_audit_all(ctx, config["endpoints"]))
    elapsed = time.perf_counter() - start
    return reports, summarize(reports, elapsed, config.get("fail_on", "high"))


async def _audit_all(ctx, endpoints):
    return list(await asyncio.gather(*(audit_endpoint(ctx, endpoint) for endpoint in endpoints)))


def summarize(reports, elapsed, fail_on="high"):
    failed = {"high": 0, "medium": 0}
    checks = passed = associations = 0
    unreachable = []
    failing = []
    for report in reports:
        associations += report["associations"]
        for finding in report["findings"]:
            if finding["id"] == REACHABLE[0]:
                unreachable.append(report["name"])
            checks += 1
            if finding["passed"]:
                passed += 1
            else:
                failed[finding["severity"]] += 1
                if SEVERITY_ORDER[finding["severity"]] >= FAIL_ON[fail_on]:
                    failing.append("%s: %s" % (report["name"], finding["id"]))
    return {
        "endpoints": len(reports),
        "checks": checks,
        "passed": passed,
        "failed": failed,
        "unreachable": unreachable,
        "associations": associations,
        "elapsed_ms": round(elapsed * 1000.0, 1),
        "failing": failing,
    }
