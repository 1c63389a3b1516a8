"""Where ``ansible_collections.dicomsec.hardening`` can be imported from, for a plain checkout.

Tests, and benchmarks that drive the modules, need the checkout importable as
the collection: inside an ``ansible_collections/dicomsec/hardening`` tree that
is the tree itself; after ``make setup`` it is the ``.collections`` link; else
a temporary link is made.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def collections_path():
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
