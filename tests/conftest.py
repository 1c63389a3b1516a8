"""Every test under tests/ can import the collection as ``ansible_collections.dicomsec.hardening``."""

from __future__ import annotations

import sys

from collections_path import collections_path

if collections_path() not in sys.path:
    sys.path.insert(0, collections_path())
