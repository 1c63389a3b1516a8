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
  # What the roles read of the facts (os_family, architecture, fqdn) is in the minimal set.
  gather_subset: [min]
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
  gather_subset: [min]
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


# A line of the default callback that belongs to one host: a task result ("ok: [h]",
# "fatal: [h -> localhost]: FAILED!") or, with -v and more, a connection line ("<h> EXEC").
_HOST_LINE = re.compile(r"^(?:[a-zA-Z -]+: \[(case\d+)(?: -> [^\]]+)?\]|<(case\d+)>|(case\d+)\s+: ok=)")
_RECAP = re.compile(r"^(case\d+)\s*: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def run_batch(case_dir, role, cases, tags=None, entry=None, verbose=False, play=None, forks=8):
    """Run every case of ``{name: role_vars}`` as a host of its own in one ansible-playbook --check.

    Returns ``{name: result}`` as run_check does. Starting ansible-playbook costs about as much
    CPU as checking one case, so one process for all cases of a role instead of one per case.
    Each case's variables are its host's inventory variables (local connection); ``out`` is
    that host's part of the output (its results, and every task and play header and warning),
    with its name shown as localhost, followed by the run's whole standard error (where
    warnings go), so a secret that reaches either is in every case's output. A case whose input
    the role reads through other hosts (strongswan_tunnel's peers) needs run_check.
    """
    case_dir = Path(case_dir)
    case_dir.mkdir(parents=True, exist_ok=True)
    hosts = {"case%03d" % index: name for index, name in enumerate(cases)}
    inventory = {"all": {"hosts": {
        host: dict(cases[name], ansible_connection="local", ansible_python_interpreter=sys.executable)
        for host, name in hosts.items()}}}
    (case_dir / "inventory.json").write_text(json.dumps(inventory))
    if play is None:
        play = PLAY.format(role=role, entry=entry) if entry else ROLE_PLAY.format(role=role)
    if "hosts: localhost\n" not in play:
        raise ValueError("run_batch runs plays for hosts: localhost, as run_check does")
    (case_dir / "play.yml").write_text(play.replace("hosts: localhost\n", "hosts: all\n"))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_ROLES_PATH=str(REPO / "roles"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(case_dir / "inventory.json"),
           "--check", "--forks", str(forks)]
    if verbose:
        cmd.append("-vvv")
    if tags:
        cmd += ["--tags", tags]
    cmd.append(str(case_dir / "play.yml"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    parts = {host: [] for host in hosts}
    owner = None
    error = []  # an "[ERROR]: Task failed" block: printed just before its host's failure line
    for line in proc.stdout.splitlines():
        match = _HOST_LINE.match(line)
        if match:
            owner = match.group(1) or match.group(2) or match.group(3)
            parts[owner].extend(error)
            error = []
        elif line.startswith("[ERROR]") or (error and not line.startswith(("TASK [", "PLAY ", "RUNNING "))):
            error.append(line)
            continue
        elif not line.startswith((" ", "\t")):
            owner = None  # a header, a warning: every case's
            for host in parts:
                parts[host].extend(error)
            error = []
        for host in ([owner] if owner else parts):
            parts[host].append(line)
    recap = {m.group(1): (int(m.group(2)), int(m.group(3)) + int(m.group(4))) for m in _RECAP.finditer(proc.stdout)}
    results = {}
    for host, name in hosts.items():
        out = re.sub(r"\b%s\b" % host, "localhost", "\n".join(parts[host])) + "\n" + proc.stderr
        if host in recap:
            changed, failures = recap[host]
            rc = 2 if failures else 0
        else:  # the run ended before its recap: as it ended
            changed, rc = None, proc.returncode or 1
        results[name] = {"rc": rc, "out": out, "changed": changed}
    return results


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
