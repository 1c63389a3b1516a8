# -*- coding: utf-8 -*-
# Copyright: contributors to the dicomsec.hardening collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""AE titles that DICOM products and tools ship with, for dicom_audit's guessing checks.

An attacker who does not know a site's AE titles tries these first; surveys of DICOM
servers on the internet got past AE title whitelists with exactly such titles, because an
installer's default calling title was left on the list or the archive still answers to its
product name.  ``called_ae_guess`` tries the ``called`` titles as called AE with the
authorized calling AE; ``vendor_default_ae`` tries the ``calling`` titles as calling AE on
the endpoint's real called AE.

The list is data, kept here as a Python module because a module's ``module_utils`` travel
with it to the managed host and a data file beside them would not.  Users add titles with
dicom_audit's ``vendor_ae_titles`` option instead of editing this file.

Each entry: (title, roles, where the title comes from).  A source marked "unverified" is
a commonly published default that was not checked against the product's own documentation.
"""

from __future__ import annotations

__metaclass__ = type

VENDOR_AE_TITLES = (
    # DCMTK 3.6.x command line tools, each tool's --help ("default: ..."); the called
    # default of every DCMTK SCU is ANY-SCP, and storescp's own title is STORESCP.
    ("ANY-SCP", ("called",), "DCMTK echoscu/storescu/findscu/movescu/getscu --help: default called AE title"),
    ("STORESCP", ("called",), "DCMTK storescp --help: default AE title"),
    ("STORESCU", ("called", "calling"), "DCMTK storescu --help: default calling AE title"),
    ("ECHOSCU", ("called", "calling"), "DCMTK echoscu --help: default calling AE title"),
    ("FINDSCU", ("calling",), "DCMTK findscu --help: default calling AE title"),
    ("MOVESCU", ("calling",), "DCMTK movescu --help: default calling and move destination AE title"),
    ("GETSCU", ("calling",), "DCMTK getscu --help: default calling AE title"),
    # Orthanc: DicomAet in the configuration Orthanc ships ("ORTHANC"), also the title
    # nmap's dicom-brute documentation shows being found.
    ("ORTHANC", ("called", "calling"), "Orthanc default configuration, DicomAet"),
    # dcm4chee 2.x and dcm4chee-arc-light 5.x: the archive's default AE title, as in the
    # dcm4chee connector properties of weasis-pacs-connector (arc.aet=DCM4CHEE).
    ("DCM4CHEE", ("called", "calling"), "dcm4chee archive default AE title (weasis-pacs-connector dicom-dcm4chee.properties)"),
    # pynetdicom: AE() without a title, and the called default of its apps.
    ("PYNETDICOM", ("calling",), "pynetdicom AE default ae_title"),
    # DICOM-rs storescu --help: default calling AE title.
    ("STORE-SCU", ("calling",), "DICOM-rs dicom-storescu --help: default calling AE title"),
    # Conquest DICOM server: MyACRNema in the dicom.ini its installer writes.
    ("CONQUESTSRV1", ("called", "calling"), "Conquest DICOM server manual, dicom.ini MyACRNema"),
    # Viewers that run a listener (OsiriX and its fork Horos, ClearCanvas Workstation).
    ("OSIRIX", ("called", "calling"), "OsiriX listener preferences default AE title (unverified)"),
    ("HOROS", ("called", "calling"), "Horos listener preferences default AE title (unverified)"),
    ("CLEARCANVAS", ("called", "calling"), "ClearCanvas Workstation default AE title (unverified)"),
    # Generic titles installers and integrators leave in place.
    ("PACS", ("called", "calling"), "generic default of many PACS installers (unverified)"),
    ("DICOM", ("called", "calling"), "generic default (unverified)"),
    ("AE_TITLE", ("called", "calling"), "placeholder left in configuration templates (unverified)"),
    ("ANY-SCU", ("calling",), "generic counterpart of ANY-SCP (unverified)"),
)


def titles(role, extra=()):
    """The shipped titles with ``role`` (called or calling) followed by ``extra``, each once."""
    seen = []
    for title, roles, dummy_source in VENDOR_AE_TITLES:
        if role in roles and title not in seen:
            seen.append(title)
    for title in extra or ():
        title = title.strip()
        if title and title not in seen:
            seen.append(title)
    return seen
