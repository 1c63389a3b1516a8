# -*- coding: utf-8 -*-
"""What a person sees of a report page: Debian's headless Chromium loads it (running its
script), and the DOM it ends with is read back as the rows and counts on the screen."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import pytest


def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Debian's chromium is needed for the report page tests (make setup installs it)")
    return path


def rendered_dom(page, profile):
    """The page's DOM after Chromium has loaded it and run its script."""
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--user-data-dir=%s" % profile, "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


class Screen(HTMLParser):
    """The check rows (class, text) in document order, the counts' texts, every tag, and
    the attributes of the element with id ``filter``."""

    def __init__(self):
        super().__init__()
        self.rows = []
        self.counts = {}
        self.tags = []
        self.attributes = []
        self.filter_attrs = None
        self._row = None
        self._count = None
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.attributes.extend(attrs.items())
        if tag == "title":
            self._in_title = True
        if tag == "tr" and "check" in (attrs.get("class") or "").split():
            self._row = [attrs["class"], []]
        if attrs.get("data-count"):
            self._count = [attrs["data-count"], []]
        if attrs.get("id") == "filter":
            self.filter_attrs = attrs

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if tag == "tr" and self._row is not None:
            self.rows.append((self._row[0], " ".join("".join(self._row[1]).split())))
            self._row = None
        if tag == "span" and self._count is not None:
            self.counts[self._count[0]] = "".join(self._count[1]).strip()
            self._count = None

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._row is not None:
            self._row[1].append(data + " ")
        if self._count is not None:
            self._count[1].append(data)


def screen(page, profile):
    parsed = Screen()
    parsed.feed(rendered_dom(page, profile))
    return parsed
