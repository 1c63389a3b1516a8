# -*- coding: utf-8 -*-
"""The HTML report as a person sees it in a browser (headless Chromium): the counts, the
failing row first when a control is broken on purpose, the twin of each refusal beside it,
and markup from the network shown as text, never run."""

from __future__ import annotations

import json

from browser import screen
from playbook_lab import REGISTERED_AE, client_tls, load_reports, reports_dir, run_verify, start_tls_pacs

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_report


def test_the_page_shows_the_broken_ae_whitelist_as_the_first_row_with_the_counts(pki, servers, tmp_path):
    # The PACS lets any calling AE title in: the unknown-AE check must fail, and the page
    # must say so first, where a person looks.
    port = servers(start_tls_pacs(pki))
    position = {"dicomsec_calling_ae": REGISTERED_AE, "dicomsec_probe_tls": client_tls(pki)}
    rc, out, _tasks = run_verify(tmp_path, port, "modalities", position)
    assert rc != 0, out
    seen = screen(reports_dir(tmp_path) / "verify.html", tmp_path / "chromium")
    assert seen.counts == {"total": "3 checks", "failed": "1 failed", "inconclusive": "0 inconclusive",
                           "passed": "2 passed"}
    first_class, first_text = seen.rows[0]
    assert first_class.split() == ["check", "fail"], seen.rows
    assert first_text.startswith("FAIL lab-modality (modality) lab-pacs"), first_text
    assert "calling_ae=NOT-REGISTERED" in first_text and "let in accepted" in first_text
    assert [c.split()[1] for c, _text in seen.rows] == ["fail", "pass", "pass"]
    # The page's own script ran (the browser admitted it under the page's policy).
    assert seen.filter_attrs is not None and "hidden" not in seen.filter_attrs


def test_the_page_shows_refused_attempts_beside_admitted_ones_and_all_passing(pki, servers, tmp_path):
    port = servers(start_tls_pacs(pki, calling_aes=[REGISTERED_AE]))
    position = {"dicomsec_calling_ae": REGISTERED_AE, "dicomsec_probe_tls": client_tls(pki)}
    rc, out, _tasks = run_verify(tmp_path, port, "modalities", position)
    assert rc == 0, out
    seen = screen(reports_dir(tmp_path) / "verify.html", tmp_path / "chromium")
    assert seen.counts["failed"] == "0 failed" and seen.counts["passed"] == "3 passed"
    assert all(c.split()[1] == "pass" for c, _text in seen.rows) and len(seen.rows) == 3
    _document, _junit, page = load_reports(tmp_path)
    pair = page.split('<div class="pair" data-target="lab-pacs">', 1)[1].split('<div class="pair"', 1)[0]
    admitted, refused = pair.split('<div class="refused">', 1)
    assert "calling_ae=CT01" in admitted and "calling_ae=NOT-REGISTERED" not in admitted
    assert "calling_ae=NOT-REGISTERED" in refused and "calling-ae-not-recognized" in refused


def test_markup_from_the_network_is_shown_as_text_and_never_runs(tmp_path):
    hostile = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
    records, errors = dicom_report.normalize([{
        "control": "ae_whitelist", "position": "ct-1", "target": "<b>pacs</b>", "verdict": "fail",
        "request": {"calling_ae": "<i>AE</i>"}, "outcome": "accepted", "evidence": hostile,
    }])
    assert errors == []
    page = tmp_path / "report.html"
    page.write_text(dicom_report.render_html(records, "report <u>title</u>"))
    seen = screen(page, tmp_path / "chromium")
    assert seen.title == "report <u>title</u>"
    assert "img" not in seen.tags and "b" not in seen.tags and "i" not in seen.tags and "u" not in seen.tags
    assert seen.tags.count("script") == 1
    assert not [name for name, _value in seen.attributes if name.startswith("on")]
    # The markup is on the screen as the text it is, and the title shows nothing ran.
    assert hostile in seen.rows[0][1] and "<i>AE</i>" in seen.rows[0][1] and "<b>pacs</b>" in seen.rows[0][1]
    assert json.loads(dicom_report.render_json(records, "t"))["records"][0]["evidence"] == hostile
