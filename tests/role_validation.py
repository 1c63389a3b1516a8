"""Run a role's input checks on this machine in check mode, as the roles' validation tests do.

Each case writes its variables and a one-play playbook into a directory of its own and runs
``ansible-playbook --check`` on localhost; the play stops at the role's checks (by tag or by
entry point), so nothing on this machine changes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PLAY = """- name: Check {role} input
  hosts: localhost
  connection: local
  gather_facts: true
  tasks:
    - name: Run the role's {entry} entry point
      ansible.builtin.include_role:
        name: {role}
        tasks_from: {entry}
"""

ROLE_PLAY = """- name: Check {role} input
  hosts: localhost
  connection: local
  gather_facts: true
  roles:
    - role: {role}
"""


def run_check(case_dir, role, role_vars, tags=None, entry=None, verbose=False, play=None):
    """Run one case; return rc, the whole output and the recap's changed count."""
    case_dir = Path(case_dir)
    case_dir.mkdir(parents=True, exist_ok=True)
    # The Python running the tests: interpreter discovery may find a broken shim.
    role_vars = dict(role_vars, ansible_python_interpreter=sys.executable)
    (case_dir / "vars.json").write_text(json.dumps(role_vars))
    if play is None:
        play = PLAY.format(role=role, entry=entry) if entry else ROLE_PLAY.format(role=role)
    (case_dir / "play.yml").write_text(play)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_ROLES_PATH=str(REPO / "roles"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "--check"]
    if verbose:
        cmd.append("-vvv")
    if tags:
        cmd += ["--tags", tags]
    cmd += ["-e", "@%s" % (case_dir / "vars.json"), str(case_dir / "play.yml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    recap = re.search(r"localhost\s*:\s*ok=\d+\s+changed=(\d+)", proc.stdout)
    return {"rc": proc.returncode, "out": proc.stdout + proc.stderr, "changed": int(recap.group(1)) if recap else None}


def run_all(jobs, workers=4):
    """Run ``{name: callable}`` side by side; return ``{name: result}``."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def failed_task(out):
    """The ``role : task`` a run's play failed in, or None when it did not fail."""
    head = re.split(r"^(?:fatal|failed): \[localhost", out, maxsplit=1, flags=re.M)[0]
    names = re.findall(r"^TASK \[([^\]]+)\]", head, re.M)
    return names[-1] if names and len(head) < len(out) else None


def failed_tasks(results, cases):
    """Every ``role : task`` some refused case (``cases[name][1]`` not None) failed in."""
    return {failed_task(result["out"]) for name, result in results.items() if cases[name][1] is not None}


def validate_tasks(role):
    """The tasks of a role's tasks/validate.yml."""
    import yaml

    return yaml.safe_load((REPO / "roles" / role / "tasks" / "validate.yml").read_text())
