# -*- coding: utf-8 -*-
# Copyright: contributors to the dicomsec.hardening collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The verification reports: one record per check, rendered as JSON, JUnit XML and one
self-contained HTML page.

Every value in a record may come from the network (a reject reason, an AE title, the
evidence a server's answer produced), so nothing is ever put into markup unescaped: XML
goes through ElementTree, HTML through ``html.escape``, and characters XML 1.0 cannot
carry are written as ``\\xNN``. The HTML page loads nothing from anywhere, and its
Content-Security-Policy admits only its own style and script by hash, so markup that
slipped into a value could not run even if escaping failed.

The rendering is deterministic: the same records give the same bytes, so rewriting an
unchanged report is no change.
"""

from __future__ import annotations

__metaclass__ = type

import base64
import datetime
import hashlib
import html
import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET

FORMAT = "dicomsec.hardening/report/1"
VERDICTS = ("fail", "inconclusive", "pass")
FORMATS = ("json", "junit", "html")
SUFFIXES = {"json": ".json", "junit": ".junit.xml", "html": ".html"}
FILE_MODE = 0o640
DIR_MODE = 0o750

# Request keys whose values are secrets: a record never carries them, whatever a caller
# passes in.  Compared in lower case, with '-' read as '_'.
SECRET_KEYS = frozenset(
    ("passcode", "password", "token", "key_password", "secret", "private_key", "key", "secondary_field")
)
WITHHELD = "(withheld)"

# The first word of an association outcome that says the server let the request in.
ADMITTED = ("accepted",)
REFUSED = ("rejected", "aborted", "refused", "timeout", "tls_failed", "denied")

_XML_INVALID = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_NAME_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def utc_now():
    """The current time as UTC ISO 8601 to the second, as the records carry it."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def name_error(name):
    """Why ``name`` cannot be a report file's stem, or None."""
    if not isinstance(name, str) or not _NAME_SAFE.match(name):
        return "name %r must be 1 to 100 letters, digits, '.', '_' or '-', not starting with a punctuation mark" % (name,)
    return None


def _text(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _is_secret_key(key):
    return str(key).lower().replace("-", "_") in SECRET_KEYS


def redact(value):
    """``value`` with every secret key's value replaced by WITHHELD, at any depth."""
    if isinstance(value, dict):
        return dict(
            (str(k), WITHHELD if _is_secret_key(k) and v not in (None, "") else redact(v))
            for k, v in value.items()
        )
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def association_outcome(result):
    """What a dicom_association result says happened, in a few words: the outcome, the
    reject or abort reason, and the operation's result and status."""
    if not result or not result.get("outcome"):
        return "no outcome"
    text = result["outcome"]
    reject = result.get("reject") or {}
    if reject.get("reason_name"):
        text += ": %s" % reject["reason_name"]
    abort = result.get("abort") or {}
    if abort.get("reason_name"):
        text += ": %s" % abort["reason_name"]
    if result.get("tls") and result["tls"].get("version"):
        text += " over %s" % result["tls"]["version"]
    operation = result.get("operation") or {}
    if operation.get("name"):
        text += "; %s %s" % (operation["name"], operation.get("result") or "no result")
        if isinstance(operation.get("status"), int) and not isinstance(operation.get("status"), bool):
            text += " (status 0x%04X)" % operation["status"]
    return text


def normalize(records, now=None):
    """The records as the reports hold them: every field present and a string (request a
    mapping of strings), secrets withheld, the verdict one of VERDICTS. Returns (records,
    errors); errors name the record by its position in the list."""
    now = now or utc_now()
    out = []
    errors = []
    for index, record in enumerate(records or []):
        if not isinstance(record, dict):
            errors.append("records[%d] is not a mapping" % index)
            continue
        verdict = record.get("verdict")
        if verdict not in VERDICTS:
            errors.append("records[%d].verdict must be one of %s, not %r" % (index, ", ".join(VERDICTS), verdict))
            continue
        missing = [key for key in ("control", "position", "target") if not _text(record.get(key))]
        if missing:
            errors.append("records[%d] needs %s" % (index, ", ".join(missing)))
            continue
        request = record.get("request") or {}
        if not isinstance(request, dict):
            errors.append("records[%d].request must be a mapping" % index)
            continue
        association = record.get("association") or {}
        outcome = _text(record.get("outcome")) or association_outcome(association)
        evidence = _text(record.get("evidence")) or _text(association.get("msg"))
        out.append(dict(
            site=_text(record.get("site")) or "default",
            control=_text(record["control"]),
            position=_text(record["position"]),
            role=_text(record.get("role")),
            target=_text(record["target"]),
            address=_text(record.get("address")),
            request=dict((k, _text(v)) for k, v in sorted(redact(request).items())),
            expected=_text(record.get("expected")),
            outcome=outcome,
            verdict=verdict,
            severity=_text(record.get("severity")),
            evidence=evidence,
            time=_text(record.get("time")) or now,
        ))
    return out, errors


def summarize(records):
    """Counts of the normalized records by verdict, and the failing ones in a line each."""
    counts = dict((v, 0) for v in VERDICTS)
    for record in records:
        counts[record["verdict"]] += 1
    return dict(
        total=len(records),
        passed=counts["pass"],
        failed=counts["fail"],
        inconclusive=counts["inconclusive"],
        failing=[describe(r) for r in records if r["verdict"] != "pass"],
    )


def describe(record):
    """One line naming a check and what happened, for messages and test names."""
    return "%s %s: %s %s -> %s: expected %s, got %s" % (
        record["verdict"].upper(), record["control"], record["position"],
        ("(%s)" % record["role"]) if record["role"] else "", record["target"],
        record["expected"] or "-", record["outcome"] or "-",
    )


def report_time(records):
    """The time of the newest record: the report's own time, derived from its contents so
    that the same records render to the same bytes."""
    return max([r["time"] for r in records] or [""])


def _request_text(request):
    return ", ".join("%s=%s" % (k, v) for k, v in request.items())


# --------------------------------------------------------------------------- JSON


def render_json(records, title):
    summary = summarize(records)
    document = dict(
        format=FORMAT,
        title=title,
        time=report_time(records),
        summary=dict((k, summary[k]) for k in ("total", "passed", "failed", "inconclusive")),
        records=records,
    )
    text = json.dumps(document, indent=2, sort_keys=False, ensure_ascii=True)
    # A control character is already an escape; markup becomes one too, so the JSON stays
    # inert even where a tool pastes it into a page. The three only occur inside strings.
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text + "\n"


# --------------------------------------------------------------------------- JUnit


def _x(value):
    """A string XML 1.0 can carry: characters it cannot are written as \\xNN."""
    return _XML_INVALID.sub(lambda m: "\\x%02x" % ord(m.group(0)) if ord(m.group(0)) < 256 else "\\u%04x" % ord(m.group(0)),
                            _text(value))


def render_junit(records, title):
    """One <testsuite> per site and control, one <testcase> per check: a failed check is a
    <failure>, an inconclusive one an <error> (the check could not tell), so that a CI
    system shows both and neither as a pass."""
    summary = summarize(records)
    root = ET.Element("testsuites", dict(
        name=_x(title), tests=str(summary["total"]), failures=str(summary["failed"]),
        errors=str(summary["inconclusive"]), time="0",
    ))
    suites = {}
    for record in records:
        key = (record["site"], record["control"])
        if key not in suites:
            suites[key] = ET.SubElement(root, "testsuite", dict(
                name=_x("%s.%s" % key), tests="0", failures="0", errors="0", skipped="0",
                time="0", timestamp=_x(record["time"]),
            ))
        suite = suites[key]
        suite.set("tests", str(int(suite.get("tests")) + 1))
        name = "%s (%s) -> %s%s: %s" % (
            record["position"], record["role"] or "-", record["target"],
            " %s" % record["address"] if record["address"] else "", _request_text(record["request"]) or "-",
        )
        case = ET.SubElement(suite, "testcase", dict(
            classname=_x("%s.%s" % key), name=_x(name), time="0",
        ))
        body = "expected: %s\noutcome: %s\nevidence: %s\ntime: %s\n" % (
            record["expected"], record["outcome"], record["evidence"], record["time"]
        )
        if record["severity"]:
            body += "severity: %s\n" % record["severity"]
        if record["verdict"] == "fail":
            suite.set("failures", str(int(suite.get("failures")) + 1))
            failure = ET.SubElement(case, "failure", dict(
                type="fail", message=_x("expected %s, got %s" % (record["expected"], record["outcome"])),
            ))
            failure.text = _x(body)
        elif record["verdict"] == "inconclusive":
            suite.set("errors", str(int(suite.get("errors")) + 1))
            error = ET.SubElement(case, "error", dict(
                type="inconclusive", message=_x("inconclusive: %s" % record["outcome"]),
            ))
            error.text = _x(body)
        else:
            out = ET.SubElement(case, "system-out")
            out.text = _x(body)
    if hasattr(ET, "indent"):
        ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1b1b1b;background:#fff}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.2em;margin:1.6em 0 .4em;border-bottom:2px solid #ccc}
h3{font-size:1.05em;margin:1.2em 0 .3em}
.summary{display:flex;gap:1em;margin:.6em 0 1em;flex-wrap:wrap}
.count{padding:.4em .8em;border-radius:4px;font-weight:600;border:1px solid #bbb}
.count.fail{background:#fde2e1;border-color:#c62828}.count.inconclusive{background:#fff3cd;border-color:#b8860b}
.count.pass{background:#e3f4e4;border-color:#2e7d32}
table{border-collapse:collapse;width:100%;margin:.3em 0 1em}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
tr.fail td{background:#fde2e1}tr.inconclusive td{background:#fff3cd}
td.verdict{font-weight:700;white-space:nowrap}tr.fail td.verdict{color:#b71c1c}tr.pass td.verdict{color:#1b5e20}
.answer{white-space:nowrap;font-weight:600}.answer.admitted{color:#0d47a1}.answer.refused{color:#4a148c}
.evidence{font-family:ui-monospace,monospace;font-size:.9em;word-break:break-word}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em}.pair>div{border:1px solid #ccc;padding:.4em .6em}
.pair ul{margin:.2em 0;padding-left:1.2em}.pair li.fail{color:#b71c1c;font-weight:600}
#filter{margin:.5em 0}
"""

# Filtering only hides rows; without script the page shows everything.
_JS = """
(function(){var box=document.getElementById('filter');if(!box){return;}box.hidden=false;
var cb=document.getElementById('only-problems');cb.addEventListener('change',function(){
var rows=document.querySelectorAll('tr.check.pass');for(var i=0;i<rows.length;i++){rows[i].hidden=cb.checked;}});})();
"""


def _h(value):
    return html.escape(_text(value), quote=True)


def _csp_hash(text):
    return "'sha256-%s'" % base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _answer(outcome):
    """admitted, refused or None, from the first word of an association outcome."""
    word = re.split(r"[\s:;,(]", outcome or "", maxsplit=1)[0]
    if word in ADMITTED:
        return "admitted"
    if word in REFUSED:
        return "refused"
    return None


def _rank(record):
    return VERDICTS.index(record["verdict"])


def _sorted_for_people(records):
    """Failures first, then inconclusive, then passes; within a verdict the admitted
    attempts just before the refused ones, so each refusal is read next to its twin."""
    answer_rank = {"admitted": 0, "refused": 1, None: 2}
    return sorted(records, key=lambda r: (
        _rank(r), answer_rank[_answer(r["outcome"])], r["target"], r["position"], r["time"]
    ))


def _group(records, key):
    groups = {}
    order = []
    for record in records:
        k = key(record)
        if k not in groups:
            groups[k] = []
            order.append(k)
        groups[k].append(record)
    return [(k, groups[k]) for k in order]


def _site_rank(items):
    return min(_rank(r) for r in items)


def render_html(records, title):
    summary = summarize(records)
    css = _CSS.strip()
    js = _JS.strip()
    csp = "default-src 'none'; style-src %s; script-src %s; img-src 'none'; base-uri 'none'; form-action 'none'" % (
        _csp_hash(css), _csp_hash(js)
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # The policy is the module's own text (no quote marks of the attribute's kind).
        '<meta http-equiv="Content-Security-Policy" content="%s">' % csp,
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>%s</title>" % _h(title),
        "<style>%s</style>" % css,
        "</head><body>",
        "<h1>%s</h1>" % _h(title),
        '<p class="time">Newest check: <time>%s</time> (UTC)</p>' % _h(report_time(records) or "no checks"),
        '<div class="summary" id="summary">',
        '<span class="count total" data-count="total">%d checks</span>' % summary["total"],
        '<span class="count fail" data-count="failed">%d failed</span>' % summary["failed"],
        '<span class="count inconclusive" data-count="inconclusive">%d inconclusive</span>' % summary["inconclusive"],
        '<span class="count pass" data-count="passed">%d passed</span>' % summary["passed"],
        "</div>",
        '<div id="filter" hidden><label><input type="checkbox" id="only-problems"> '
        "show failed and inconclusive checks only</label></div>",
    ]
    if not records:
        parts.append("<p>No check ran.</p>")
    # Sites with a failure first, then by name; within a site the controls the same way.
    sites = sorted(_group(records, lambda r: r["site"]), key=lambda kv: (_site_rank(kv[1]), kv[0]))
    for site, site_records in sites:
        parts.append('<section class="site" data-site="%s">' % _h(site))
        parts.append("<h2>Site %s</h2>" % _h(site))
        parts.extend(_attempts_by_target(site_records))
        controls = sorted(_group(site_records, lambda r: r["control"]), key=lambda kv: (_site_rank(kv[1]), kv[0]))
        for control, control_records in controls:
            parts.append('<section class="control" data-control="%s">' % _h(control))
            s = summarize(control_records)
            parts.append("<h3>Control %s <small>(%d failed, %d inconclusive, %d passed)</small></h3>" % (
                _h(control), s["failed"], s["inconclusive"], s["passed"]))
            parts.append('<table class="checks"><thead><tr><th>Verdict</th><th>From (role)</th><th>To</th>'
                         "<th>Tried</th><th>Expected</th><th>Answer</th><th>Evidence</th><th>Time</th></tr></thead><tbody>")
            for record in _sorted_for_people(control_records):
                answer = _answer(record["outcome"])
                parts.append(
                    '<tr class="check %s" data-verdict="%s">'
                    '<td class="verdict">%s%s</td><td class="position">%s%s</td><td class="target">%s%s</td>'
                    '<td class="request">%s</td><td class="expected">%s</td>'
                    '<td class="outcome"><span class="answer %s">%s</span> %s</td>'
                    '<td class="evidence">%s</td><td class="time">%s</td></tr>' % (
                        _h(record["verdict"]), _h(record["verdict"]),
                        _h(record["verdict"].upper()),
                        (" <small>(%s)</small>" % _h(record["severity"])) if record["severity"] else "",
                        _h(record["position"]), (" <small>(%s)</small>" % _h(record["role"])) if record["role"] else "",
                        _h(record["target"]), ("<br><small>%s</small>" % _h(record["address"])) if record["address"] else "",
                        _h(_request_text(record["request"])), _h(record["expected"]),
                        _h(answer or "other"), _h({"admitted": "let in", "refused": "turned away"}.get(answer, "")),
                        _h(record["outcome"]), _h(record["evidence"]), _h(record["time"]),
                    )
                )
            parts.append("</tbody></table></section>")
        parts.append("</section>")
    parts.append("<script>%s</script>" % js)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _attempts_by_target(records):
    """Per target, the attempts it let in beside those it turned away: what was tried
    from where, and what happened."""
    dicom = [r for r in records if _answer(r["outcome"])]
    if not dicom:
        return []
    parts = ['<div class="attempts">']
    for target, items in sorted(_group(dicom, lambda r: r["target"]), key=lambda kv: (_site_rank(kv[1]), kv[0])):
        parts.append('<h3>Associations to %s</h3><div class="pair" data-target="%s">' % (_h(target), _h(target)))
        for answer, heading in (("admitted", "Let in"), ("refused", "Turned away")):
            parts.append('<div class="%s"><strong>%s</strong><ul>' % (answer, heading))
            chosen = [r for r in _sorted_for_people(items) if _answer(r["outcome"]) == answer]
            if not chosen:
                parts.append("<li><em>none</em></li>")
            for r in chosen:
                parts.append('<li class="%s">%s from %s%s: %s &mdash; %s (expected %s)</li>' % (
                    _h(r["verdict"]), _h(r["verdict"].upper()), _h(r["position"]),
                    (" (%s)" % _h(r["role"])) if r["role"] else "", _h(_request_text(r["request"])),
                    _h(r["outcome"]), _h(r["expected"]),
                ))
            parts.append("</ul></div>")
        parts.append("</div>")
    parts.append("</div>")
    return parts


RENDERERS = {"json": render_json, "junit": render_junit, "html": render_html}


# --------------------------------------------------------------------------- files


def render_all(records, formats, name, title):
    """{format: (file name, text)} for the formats asked for."""
    return dict((fmt, (name + SUFFIXES[fmt], RENDERERS[fmt](records, title))) for fmt in formats)


def read_text(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except (IOError, OSError):
        return None


def write_atomic(path, text, mode=FILE_MODE):
    """Write ``text`` to ``path`` through a temporary file in the same directory, renamed
    into place: a reader sees the old report or the new one, never half of one."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
