# -*- coding: utf-8 -*-
"""The reports' records and their three renderings, without a network: escaping of what a
server may send, secrets withheld, counts, order (failures first) and atomic writes."""

from __future__ import annotations

import json
import os
import stat
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_report as dr

HOSTILE = "<script>alert(1)</script>&\"'<img src=x onerror=alert(2)>\x01\x1b"


def record(**extra):
    base = dict(
        site="hospital-a", control="ae_whitelist", position="ct-1", role="modality",
        target="pacs-1", address="198.18.10.70:4242",
        request={"calling_ae": "NOT-REGISTERED", "called_ae": "SITEPACS", "dimse": "store", "tls": True},
        expected="rejected: calling-ae-not-recognized", outcome="rejected: calling-ae-not-recognized",
        verdict="pass", evidence="association rejected", time="2025-01-01T12:00:00Z",
    )
    base.update(extra)
    return base


def normalized(*records):
    out, errors = dr.normalize(list(records), now="2025-01-01T00:00:00Z")
    assert errors == []
    return out


class Elements(HTMLParser):
    """The tags and text of a page, as a browser's parser would see them."""

    def __init__(self):
        super().__init__()
        self.tags = []
        self.attrs = []
        self.text = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data):
        self.text.append(data)


def parse_html(page):
    parser = Elements()
    parser.feed(page)
    return parser


def test_counts_are_by_verdict_and_failing_lists_only_what_did_not_pass():
    records = normalized(record(), record(verdict="fail", outcome="accepted"), record(verdict="inconclusive"))
    summary = dr.summarize(records)
    assert (summary["total"], summary["passed"], summary["failed"], summary["inconclusive"]) == (3, 1, 1, 1)
    assert len(summary["failing"]) == 2
    assert summary["failing"][0].startswith("FAIL ae_whitelist: ct-1 (modality) -> pacs-1")
    assert summary["failing"][1].startswith("INCONCLUSIVE")


def test_a_record_without_a_verdict_or_control_is_refused_naming_it():
    _records, errors = dr.normalize([record(), record(verdict="maybe"), {"verdict": "pass", "position": "x", "target": "y"}])
    assert errors == [
        "records[1].verdict must be one of fail, inconclusive, pass, not 'maybe'",
        "records[2] needs control",
    ]


def test_secret_request_values_are_withheld_at_any_depth():
    records = normalized(record(request={
        "calling_ae": "CT01", "passcode": "s3cret-pass", "identity": {"type": "jwt", "token": "eyJhbGciOi"},
        "Key-Password": "kp", "username": "ct01",
    }))
    request = records[0]["request"]
    assert request["passcode"] == dr.WITHHELD and request["Key-Password"] == dr.WITHHELD
    assert "eyJhbGciOi" not in request["identity"] and dr.WITHHELD in request["identity"]
    assert request["username"] == "ct01" and request["calling_ae"] == "CT01"
    for fmt in dr.FORMATS:
        text = dr.RENDERERS[fmt](records, "t")
        assert "s3cret-pass" not in text and "eyJhbGciOi" not in text and ">kp<" not in text


def test_outcome_and_evidence_are_read_from_a_dicom_association_result_when_omitted():
    association = {
        "outcome": "rejected", "msg": "association to 127.0.0.1:4242 rejected",
        "reject": {"reason_name": "calling-ae-not-recognized"}, "operation": None, "tls": {"version": "TLSv1.3"},
    }
    r = normalized(record(outcome=None, evidence=None, association=association))[0]
    assert r["outcome"] == "rejected: calling-ae-not-recognized over TLSv1.3"
    assert r["evidence"] == "association to 127.0.0.1:4242 rejected"
    stored = {"outcome": "accepted", "operation": {"name": "C-STORE", "result": "failure", "status": 0xA700}}
    assert dr.association_outcome(stored) == "accepted; C-STORE failure (status 0xA700)"
    assert dr.association_outcome({"outcome": None, "msg": "invalid parameters"}) == "no outcome"


def test_the_time_defaults_to_now_and_the_report_time_is_the_newest_record():
    records = normalized(record(time=None), record(time="2025-01-02T00:00:00Z"))
    assert records[0]["time"] == "2025-01-01T00:00:00Z"
    assert dr.report_time(records) == "2025-01-02T00:00:00Z"


def test_hostile_values_are_inert_in_json():
    records = normalized(record(evidence=HOSTILE, position=HOSTILE, request={"calling_ae": "<b>X</b>"}))
    text = dr.render_json(records, HOSTILE)
    assert "<" not in text and ">" not in text and "\x1b" not in text
    document = json.loads(text)
    assert document["records"][0]["evidence"] == HOSTILE
    assert document["format"] == dr.FORMAT and document["summary"]["total"] == 1


def test_hostile_values_are_inert_in_junit_and_the_xml_parses():
    records = normalized(record(evidence=HOSTILE, verdict="fail", control=HOSTILE, request={"calling_ae": "<b>X</b>"}))
    text = dr.render_junit(records, HOSTILE)
    assert "<script>" not in text and "<img" not in text and "<b>" not in text
    root = ET.fromstring(text.encode("utf-8"))
    failure = root.find("./testsuite/testcase/failure")
    assert failure is not None
    # The characters XML cannot carry are written as escapes, the rest arrives intact.
    assert "<script>alert(1)</script>" in failure.text and "\\x01\\x1b" in failure.text
    assert root.get("failures") == "1" and root.get("tests") == "1"


def test_hostile_values_are_inert_in_html():
    records = normalized(record(evidence=HOSTILE, verdict="fail", target="<i>pacs</i>", request={"calling_ae": "<b>X</b>"}))
    page = dr.render_html(records, HOSTILE)
    parsed = parse_html(page)
    # The only elements are the page's own: one script (its filter), no img, b or i.
    assert parsed.tags.count("script") == 1
    assert "img" not in parsed.tags and "b" not in parsed.tags and "i" not in parsed.tags
    assert not [name for name, _value in parsed.attrs if name.startswith("on")]
    text = "".join(parsed.text)
    assert "<script>alert(1)</script>" in text and "<b>X</b>" in text


def test_the_html_page_loads_nothing_and_admits_only_its_own_script_and_style():
    page = dr.render_html(normalized(record()), "t")
    parsed = parse_html(page)
    assert "link" not in parsed.tags and "img" not in parsed.tags
    assert not [v for name, v in parsed.attrs if name in ("src", "href")]
    assert "http://" not in page and "https://" not in page and "@import" not in page
    assert "default-src 'none'" in page and "script-src 'sha256-" in page and "'unsafe-inline'" not in page
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    assert dr._csp_hash(script) in page


def test_html_puts_failures_first_and_admitted_attempts_next_to_refused_ones():
    records = normalized(
        record(control="source_whitelist", position="ct-1", outcome="accepted; C-ECHO success", expected="accepted"),
        record(control="ae_whitelist", verdict="pass"),
        record(control="source_whitelist", position="intruder", role="outsider", outcome="accepted", verdict="fail",
               expected="denied"),
        record(control="source_whitelist", position="other", role="outsider", outcome="refused", expected="denied"),
    )
    page = dr.render_html(records, "t")
    # The failing control's section comes first, and its failing row first within it.
    assert page.index('data-control="source_whitelist"') < page.index('data-control="ae_whitelist"')
    section = page.split('data-control="source_whitelist"', 1)[1].split("</section>", 1)[0]
    rows = section.split('<tr class="check ')[1:]
    assert [r.split('"', 1)[0] for r in rows] == ["fail", "pass", "pass"]
    assert "intruder" in rows[0] and "ct-1" in rows[1] and "other" in rows[2]
    # Per target, what it let in stands beside what it turned away.
    pair = page.split('<div class="pair" data-target="pacs-1">', 1)[1]
    admitted, refused = pair.split('<div class="refused">', 1)
    assert "intruder" in admitted and "ct-1" in admitted and "other" in refused
    assert '<span class="count fail" data-count="failed">1 failed</span>' in page
    assert '<span class="count pass" data-count="passed">3 passed</span>' in page


def test_rendering_is_deterministic():
    records = normalized(record(), record(verdict="fail"))
    for fmt in dr.FORMATS:
        assert dr.RENDERERS[fmt](records, "t") == dr.RENDERERS[fmt](records, "t")


def test_an_empty_report_says_no_check_ran():
    page = dr.render_html([], "t")
    assert "No check ran." in page and "0 checks" in page
    assert ET.fromstring(dr.render_junit([], "t").encode()).get("tests") == "0"


@pytest.mark.parametrize("name", ["verify", "audit", "site-a.run_2"])
def test_report_names_that_are_file_stems_pass(name):
    assert dr.name_error(name) is None


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 101, "a b"])
def test_report_names_that_could_leave_the_directory_are_refused(name):
    assert "name" in dr.name_error(name)


def test_write_atomic_replaces_the_file_whole_with_mode_0640(tmp_path):
    path = tmp_path / "verify.json"
    path.write_text("old")
    os.chmod(str(path), 0o644)
    dr.write_atomic(str(path), "new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["verify.json"]


def test_write_atomic_leaves_no_temporary_file_when_it_fails(tmp_path):
    target = tmp_path / "dir-not-file"
    target.mkdir()
    with pytest.raises(OSError):
        dr.write_atomic(str(target), "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir-not-file"]
