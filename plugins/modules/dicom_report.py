#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to the dicomsec.hardening collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type

DOCUMENTATION = r"""
module: dicom_report
short_description: Write the verification reports (JSON, JUnit XML, HTML) of a run's checks
version_added: 0.1.0
description:
  - Takes one record per check (what was tried, from where, against which target, what was
    expected and what happened) and writes, in O(dest), up to three reports of the same
    records. The C(verify) and C(audit) playbooks of the collection call it on the controller
    after every run.
  - V(json) (C(NAME.json)) holds every record, for machines.
  - V(junit) (C(NAME.junit.xml)) holds one C(testcase) per check, in one C(testsuite) per site
    and control. A failed check is a C(failure), an inconclusive one an C(error), so that a CI
    system shows both and neither as a pass.
  - V(html) (C(NAME.html)) is one self-contained page (no external stylesheet, script, font or
    image) that shows the counts, then per site the associations each target let in beside those
    it turned away, then per control every check, failures first. A little inline script adds a
    filter; the page reads the same without it.
  - Every value may come from the network (evidence, reject reasons, AE titles) and is escaped
    in every format. The page's Content-Security-Policy admits only its own style and script.
  - A request value under a secret-looking key (C(passcode), C(password), C(token),
    C(key_password), C(secret), C(private_key), C(key)) is written as C((withheld)); callers
    should not pass secrets at all.
  - Each file is written to a temporary file beside it and renamed into place, with mode
    C(0640); O(dest) is created with mode C(0750) when missing. The files are overwritten on
    every run, so they always hold the latest run; point O(dest) at a directory per run to
    keep a history.
  - The rendering depends on the records alone (the report's time is that of its newest
    record), so rewriting the same records changes nothing.
author:
  - dicomsec.hardening contributors (@dicomsec)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Renders the reports and says which files would change, without writing anything.
  diff_mode:
    support: full
    details: The diff shows the JSON report, from which the other two are rendered.
  platform:
    support: full
    platforms: posix
options:
  records:
    description:
      - One record per check. Every field is rendered as text.
    type: list
    elements: dict
    required: true
    suboptions:
      site:
        description: The site the target belongs to.
        type: str
        default: default
      control:
        description:
          - The control the check proves, for example V(ae_whitelist), V(source_whitelist),
            V(authorized_path) or an audit check id such as V(any_ae).
        type: str
        required: true
      position:
        description: Where the check was made from, the probing host's inventory name.
        type: str
        required: true
      role:
        description: What the position stands for, for example V(modality) or V(outsider).
        type: str
      target:
        description: What was probed, for example the PACS's inventory name.
        type: str
        required: true
      address:
        description: The target's address as probed, for example V(198.18.10.70:4242).
        type: str
      request:
        description:
          - What was tried, as names and values (calling and called AE title, DIMSE operation,
            TLS, client certificate, identity type). Never secrets.
        type: dict
        default: {}
      expected:
        description: What the control requires to happen.
        type: str
        default: ""
      outcome:
        description:
          - What happened. When omitted it is read from O(records[].association).
          - The first word says whether the target let the request in (V(accepted)) or turned it
            away (V(rejected), V(aborted), V(refused), V(timeout), V(tls_failed), V(denied));
            the page groups the attempts by it.
        type: str
      association:
        description:
          - The result of M(dicomsec.hardening.dicom_association) for this check (its C(outcome),
            C(reject), C(abort), C(tls), C(operation) and C(msg)), read for O(records[].outcome)
            and O(records[].evidence) when those are omitted. Nothing else of it is kept.
        type: dict
      verdict:
        description: V(pass), V(fail) or V(inconclusive) (the check could not tell).
        type: str
        required: true
        choices: [pass, fail, inconclusive]
      severity:
        description: How grave a failure of this check is, where the check says (audit findings).
        type: str
      evidence:
        description: What was sent and what came back, in a sentence.
        type: str
      time:
        description: When the check was made, UTC ISO 8601. Defaults to the time the module runs.
        type: str
  dest:
    description: The directory on the host the module runs on (normally the controller) that receives the reports.
    type: path
    required: true
  name:
    description: The reports' file name stem, C(NAME.json), C(NAME.junit.xml) and C(NAME.html).
    type: str
    default: report
  formats:
    description: The reports to write.
    type: list
    elements: str
    choices: [json, junit, html]
    default: [json, junit, html]
  title:
    description: The reports' title.
    type: str
    default: dicomsec.hardening verification report
notes:
  - Run it on the controller (C(delegate_to=localhost) or a play on C(localhost)); it needs
    nothing beyond Python's standard library.
  - The module never fails on failed checks; it returns the counts, and the playbook decides.
    The collection's playbooks fail after the reports are written.
seealso:
  - module: dicomsec.hardening.dicom_association
  - module: dicomsec.hardening.dicom_audit
"""

EXAMPLES = r"""
- name: Write the reports of two checks into reports/ on the controller
  dicomsec.hardening.dicom_report:
    dest: reports
    name: verify
    records:
      - site: hospital-a
        control: ae_whitelist
        position: ct-1
        role: modality
        target: pacs-1
        address: 198.18.10.70:4242
        request: {calling_ae: NOT-REGISTERED, called_ae: SITEPACS, dimse: store, tls: true}
        expected: "rejected: calling-ae-not-recognized"
        outcome: "rejected: calling-ae-not-recognized"
        verdict: pass
        evidence: "association to 198.18.10.70:4242 (called SITEPACS, calling NOT-REGISTERED) rejected"
        time: "2025-01-01T12:00:00Z"
      - site: hospital-a
        control: source_whitelist
        position: intruder
        role: outsider
        target: pacs-1
        request: {calling_ae: CT1, called_ae: SITEPACS, dimse: echo, tls: true}
        expected: denied
        outcome: accepted
        verdict: fail
  delegate_to: localhost
  register: report

- name: Fail the run after the reports are written when any check did not pass
  ansible.builtin.assert:
    that: report.summary.failed + report.summary.inconclusive == 0
    fail_msg: "{{ report.summary.failing | join('; ') }}"

- name: Only the JUnit report, for the CI system
  dicomsec.hardening.dicom_report:
    dest: /var/tmp/dicomsec-ci
    formats: [junit]
    records: "{{ my_records }}"
  delegate_to: localhost
"""

RETURN = r"""
paths:
  description: The report written (or, in check mode, that would be written) for each format asked for.
  returned: always
  type: dict
  sample:
    json: /srv/reports/verify.json
    junit: /srv/reports/verify.junit.xml
    html: /srv/reports/verify.html
changed_files:
  description: The paths whose content differs from what was there before.
  returned: always
  type: list
  elements: str
  sample: [/srv/reports/verify.json, /srv/reports/verify.junit.xml, /srv/reports/verify.html]
summary:
  description: Counts of the checks by verdict, and one line per check that did not pass.
  returned: always
  type: dict
  contains:
    total:
      description: Checks in the report.
      type: int
    passed:
      description: Checks that passed.
      type: int
    failed:
      description: Checks that failed.
      type: int
    inconclusive:
      description: Checks that could not tell.
      type: int
    failing:
      description: One line per failed or inconclusive check (verdict, control, position, target, expected, outcome).
      type: list
      elements: str
  sample:
    total: 4
    passed: 3
    failed: 1
    inconclusive: 0
    failing: ["FAIL source_whitelist: intruder (outsider) -> pacs-1: expected denied, got accepted"]
msg:
  description: One sentence with the counts and where the reports are.
  returned: always
  type: str
  sample: "4 checks: 1 failed, 0 inconclusive, 3 passed; reports in /srv/reports"
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dicomsec.hardening.plugins.module_utils import dicom_report


def main():
    module = AnsibleModule(
        argument_spec=dict(
            records=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    site=dict(type="str", default="default"),
                    control=dict(type="str", required=True),
                    position=dict(type="str", required=True),
                    role=dict(type="str"),
                    target=dict(type="str", required=True),
                    address=dict(type="str"),
                    request=dict(type="dict", default={}),
                    expected=dict(type="str", default=""),
                    outcome=dict(type="str"),
                    association=dict(type="dict"),
                    verdict=dict(type="str", required=True, choices=list(dicom_report.VERDICTS[::-1])),
                    severity=dict(type="str"),
                    evidence=dict(type="str"),
                    time=dict(type="str"),
                ),
            ),
            dest=dict(type="path", required=True),
            name=dict(type="str", default="report"),
            formats=dict(type="list", elements="str", choices=list(dicom_report.FORMATS), default=list(dicom_report.FORMATS)),
            title=dict(type="str", default="dicomsec.hardening verification report"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    error = dicom_report.name_error(params["name"])
    if error:
        module.fail_json(msg="invalid parameters, nothing was written: " + error)
    if not params["formats"]:
        module.fail_json(msg="invalid parameters, nothing was written: formats must name at least one report")
    records, errors = dicom_report.normalize(params["records"])
    if errors:
        module.fail_json(msg="invalid parameters, nothing was written: " + "; ".join(errors))

    dest = os.path.abspath(params["dest"])
    if os.path.exists(dest) and not os.path.isdir(dest):
        module.fail_json(msg="dest %s exists and is not a directory, nothing was written" % dest)
    formats = [f for f in dicom_report.FORMATS if f in params["formats"]]
    rendered = dicom_report.render_all(records, formats, params["name"], params["title"])

    paths = {}
    changed_files = []
    before = {}
    for fmt in formats:
        file_name, text = rendered[fmt]
        path = os.path.join(dest, file_name)
        paths[fmt] = path
        old = dicom_report.read_text(path)
        before[fmt] = old
        mode_wrong = old is not None and (os.stat(path).st_mode & 0o777) != dicom_report.FILE_MODE
        if old != text or mode_wrong:
            changed_files.append(path)

    if changed_files and not module.check_mode:
        try:
            if not os.path.isdir(dest):
                os.makedirs(dest, dicom_report.DIR_MODE)
            for fmt in formats:
                if paths[fmt] in changed_files:
                    dicom_report.write_atomic(paths[fmt], rendered[fmt][1])
        except (IOError, OSError) as exc:
            module.fail_json(msg="could not write the reports in %s: %s" % (dest, exc), paths=paths)

    summary = dicom_report.summarize(records)
    result = dict(
        changed=bool(changed_files),
        paths=paths,
        changed_files=changed_files,
        summary=summary,
        msg="%d checks: %d failed, %d inconclusive, %d passed; reports in %s" % (
            summary["total"], summary["failed"], summary["inconclusive"], summary["passed"], dest
        ),
    )
    if module._diff:
        diff_fmt = "json" if "json" in formats else formats[0]
        result["diff"] = dict(
            before=before[diff_fmt] or "",
            after=rendered[diff_fmt][1],
            before_header=paths[diff_fmt] if before[diff_fmt] is not None else "%s (absent)" % paths[diff_fmt],
            after_header=paths[diff_fmt],
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
