# -*- coding: utf-8 -*-
"""Make ``ansible_collections.dicomsec.hardening`` importable from a plain checkout."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]


def _collections_path():
    for parent in REPO.parents:
        if parent.name == "ansible_collections":
            return str(parent.parent)
    linked = REPO / ".collections"
    if (linked / "ansible_collections" / "dicomsec" / "hardening").exists():
        return str(linked)
    tmp = Path(tempfile.mkdtemp(prefix="dicomsec-collections-"))
    (tmp / "ansible_collections" / "dicomsec").mkdir(parents=True)
    os.symlink(REPO, tmp / "ansible_collections" / "dicomsec" / "hardening")
    return str(tmp)


if _collections_path() not in sys.path:
    sys.path.insert(0, _collections_path())
