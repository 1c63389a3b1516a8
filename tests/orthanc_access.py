# -*- coding: utf-8 -*-
"""pacs_identity's access control for Orthanc, for the tests and benchmarks that start
Debian's Orthanc by hand: every DicomAlwaysAllow* off, the called AE title and the
modality's address checked."""

HARDENED_ACCESS = {
    "DicomAlwaysAllowEcho": False,
    "DicomAlwaysAllowStore": False,
    "DicomAlwaysAllowFind": False,
    "DicomAlwaysAllowFindWorklist": False,
    "DicomAlwaysAllowGet": False,
    "DicomAlwaysAllowMove": False,
    "DicomCheckCalledAet": True,
    "DicomCheckModalityHost": True,
}
