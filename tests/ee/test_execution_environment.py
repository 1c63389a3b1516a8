"""The collection run from its execution environment, as AWX and AAP run it.

`make ee` builds dicomsec/ee:<version> with ansible-builder from the collection tarball
(tests/ee/execution-environment.yml). These tests start a lab site of their own (a
PACS, the modality registered with it, an intruder on the same LAN; addresses .110-.119
of the lab networks), then run the project in tests/ee/project/ from inside the EE, the
way an AWX job does: a fresh container per job, the project and inventory mounted,
the machine credential an SSH key, the controller on the management network. Nothing
of the checkout is mounted but that project: every playbook and module comes from the
collection the EE holds.

The site as found (Orthanc as Debian packages it) must fail the audit from the EE; the
site hardened by site.yml from the EE must then pass verify.yml and audit.yml.

    make ee-test     (or: pytest tests/ee, with `make ee` and `make lab` done)
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
PROJECT = os.path.join(HERE, "project")
LOGS = os.path.join(TOP, "build", "ee", "logs")

with open(os.path.join(TOP, "galaxy.yml")) as _galaxy:
    VERSION = yaml.safe_load(_galaxy)["version"]
EE_IMAGE = os.environ.get("DICOMSEC_EE_IMAGE", "dicomsec/ee:%s" % VERSION)
LAB_IMAGE = os.environ.get("DICOMSEC_LAB_IMAGE") or "dicomsec/lab:debian12"
TARGET_IMAGE = "dicomsec/ee-target:debian12"
# AWX runs a job as an arbitrary non-root user: the EE's user, who must read the key.
EE_UID = 1000

with open(os.path.join(TOP, "molecule", "shared", "vars", "platform.yml")) as _platform:
    PLATFORM = yaml.safe_load(_platform)
with open(os.path.join(TOP, "molecule", "shared", "vars", "networks.yml")) as _networks:
    NETWORKS = yaml.safe_load(_networks)["lab_networks"]

# name: {network: (IPv4, IPv6)}. The controller is the EE job's container.
HOSTS = {
    "ee-pacs": {"dicomsec-lan": ("198.18.10.110", "2001:db8:d1c0:10::110"),
                "dicomsec-mgmt": ("198.18.40.110", "2001:db8:d1c0:40::110")},
    "ee-modality": {"dicomsec-lan": ("198.18.10.111", "2001:db8:d1c0:10::111")},
    "ee-intruder": {"dicomsec-lan": ("198.18.10.112", "2001:db8:d1c0:10::112")},
}
JOB = "ee-job"
JOB_NETWORKS = {"dicomsec-mgmt": ("198.18.40.119", "2001:db8:d1c0:40::119"),
                "dicomsec-lan": ("198.18.10.119", "2001:db8:d1c0:10::119")}
COLLECTION_PLAYBOOKS = "/usr/share/ansible/collections/ansible_collections/dicomsec/hardening/playbooks/"


def docker(*args, check=True, **kwargs):
    return subprocess.run(["docker"] + list(args), check=check, capture_output=True, text=True, **kwargs)


def _image_label(image, label):
    out = docker("image", "inspect", "-f", '{{ index .Config.Labels "%s" }}' % label, image, check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def _target_image():
    """The lab image with an SSH server, rebuilt when its recipe or the lab image changes."""
    with open(os.path.join(HERE, "target", "Dockerfile"), "rb") as handle:
        recipe = handle.read()
    lab_id = docker("image", "inspect", "-f", "{{ .Id }}", LAB_IMAGE).stdout.strip()
    want = hashlib.sha256(recipe + lab_id.encode()).hexdigest()[:16]
    if _image_label(TARGET_IMAGE, "dicomsec.recipe") != want:
        docker("build", "-q", "--force-rm", "--build-arg", "BASE=%s" % LAB_IMAGE,
               "--label", "dicomsec.recipe=%s" % want, "-t", TARGET_IMAGE, os.path.join(HERE, "target"))
    return TARGET_IMAGE


def _ensure_network(name):
    # The same network molecule's shared create.yml makes, so scenarios and this test can
    # share it whoever comes first; it is never removed here (others may be on it).
    if docker("network", "inspect", name, check=False).returncode == 0:
        return
    net = NETWORKS[name]
    docker("network", "create", "--ipv6", "--subnet", net["ipv4"], "--subnet", net["ipv6"],
           "--label", "dicomsec.lab=1", name)


def _start_host(image, name, networks):
    (first, (ip4, ip6)), rest = list(networks.items())[0], list(networks.items())[1:]
    args = ["create", "--name", name, "--hostname", name, "--label", "dicomsec.lab=1",
            "--label", "dicomsec.scenario=ee", "--cap-drop", "ALL",
            "--cgroupns", PLATFORM["lab_cgroupns_mode"],
            "--stop-signal", PLATFORM["lab_stop_signal"],
            "--network", first, "--ip", ip4, "--ip6", ip6]
    for cap in PLATFORM["lab_capabilities"]:
        args += ["--cap-add", cap]
    for opt in PLATFORM["lab_security_opts"]:
        args += ["--security-opt", opt]
    for dev in PLATFORM["lab_devices"]:
        args += ["--device", dev]
    for tmpfs in PLATFORM["lab_tmpfs"]:
        args += ["--tmpfs", tmpfs]
    for vol in PLATFORM["lab_volumes"]:
        args += ["-v", vol]
    docker(*(args + [image, PLATFORM["lab_command"]]))
    for net, (ip4, ip6) in rest:
        docker("network", "connect", "--ip", ip4, "--ip6", ip6, net, name)
    docker("start", name)


def _remove(*names):
    # Only the containers this test names; never another scenario's.
    docker("rm", "-f", *names, check=False)


class Job:
    """One run of ansible-playbook in a fresh EE container, as an AWX job runs."""

    def __init__(self, rc, output, reports):
        self.rc, self.output, self.reports = rc, output, reports

    def recap(self):
        """{host: {ok: n, failed: n, unreachable: n, ...}} from the PLAY RECAP."""
        recap = {}
        for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", self.output, re.M):
            recap[host] = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", counts))
        return recap

    def report(self, name):
        with open(os.path.join(self.reports, name)) as handle:
            return json.load(handle)


@pytest.fixture(scope="module")
def lab():
    if docker("image", "inspect", EE_IMAGE, check=False).returncode != 0:
        pytest.fail("the execution environment %s does not exist: run `make ee`" % EE_IMAGE)
    image = _target_image()
    _remove(JOB, *HOSTS)
    for net in set(n for nets in list(HOSTS.values()) + [JOB_NETWORKS] for n in nets):
        _ensure_network(net)
    work = tempfile.mkdtemp(prefix="dicomsec-ee-")
    try:
        os.makedirs(os.path.join(work, "ssh"))
        os.makedirs(os.path.join(work, "reports"))
        key = os.path.join(work, "ssh", "id_ed25519")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dicomsec-ee-job", "-f", key],
                       check=True)
        with open(key + ".pub") as handle:
            public = handle.read()
        for name, networks in HOSTS.items():
            _start_host(image, name, networks)
        for name in HOSTS:
            boot = docker("exec", name, "timeout", str(PLATFORM["lab_boot_timeout"]),
                          "systemctl", "is-system-running", "--wait", check=False)
            assert boot.stdout.strip() in ("running", "degraded"), "%s did not boot: %s" % (name, boot.stdout)
            docker("exec", "-i", name, "sh", "-c",
                   "install -d -m 0700 /root/.ssh && cat > /root/.ssh/authorized_keys && "
                   "chmod 0600 /root/.ssh/authorized_keys && systemctl is-active --quiet ssh",
                   input=public)
        for root, dirs, files in os.walk(work):
            for entry in dirs + files:
                os.chown(os.path.join(root, entry), EE_UID, 0)
        os.chown(work, EE_UID, 0)
        yield work
    finally:
        _remove(JOB, *HOSTS)
        shutil.rmtree(work, ignore_errors=True)


def run_job(work, playbook, name, *extra):
    """Run PLAYBOOK of tests/ee/project from inside the EE; reports go to reports/NAME."""
    reports = os.path.join(work, "reports", name)
    os.makedirs(reports)
    os.chown(reports, EE_UID, 0)
    _remove(JOB)
    args = ["create", "--name", JOB, "--label", "dicomsec.lab=1", "--label", "dicomsec.scenario=ee",
            "-v", "%s:/runner/project:ro" % PROJECT, "-v", "%s:/runner/lab" % work, "-w", "/runner/project",
            # AWX turns host key checking off unless a job asks for it; the lab's hosts
            # make new keys on every boot.
            "-e", "ANSIBLE_HOST_KEY_CHECKING=False", "-e", "ANSIBLE_NOCOLOR=1"]
    (first, (ip4, ip6)), rest = list(JOB_NETWORKS.items())[0], list(JOB_NETWORKS.items())[1:]
    args += ["--network", first, "--ip", ip4, "--ip6", ip6, EE_IMAGE,
             "ansible-playbook", "-vv", "-i", "inventory/hosts.yml", playbook,
             "-e", "dicomsec_report_dir=/runner/lab/reports/%s" % name] + list(extra)
    docker(*args)
    started = time.monotonic()
    try:
        for net, (ip4, ip6) in rest:
            docker("network", "connect", "--ip", ip4, "--ip6", ip6, net, JOB)
        run = docker("start", "-a", JOB, check=False, timeout=900)
    finally:
        _remove(JOB)
    output = run.stdout + run.stderr
    # Kept after the run (build/ee/logs/, ignored by git and by the collection build).
    os.makedirs(LOGS, exist_ok=True)
    with open(os.path.join(LOGS, "%s.log" % name), "w") as handle:
        handle.write(output)
        handle.write("\n# exit status %d after %.0f s\n" % (run.returncode, time.monotonic() - started))
    return Job(run.returncode, output, reports)


def _tail(job, lines=60):
    return "\n".join(job.output.splitlines()[-lines:])


def assert_ran_inside_the_ee(job, playbook):
    """The run used the EE's Python and ansible-core and the collection installed in it."""
    assert re.search(r"^  python version = 3\.11\.\S+ .*\(/usr/bin/python3\)$", job.output, re.M), _tail(job)
    assert "ansible python module location = /usr/local/lib/python3.11/dist-packages/ansible" in job.output
    assert "ansible-playbook [core 2.19." in job.output
    # -vv names every task's file: the collection's playbook as the EE installed it.
    task_paths = re.findall(r"^task path: (\S+):\d+$", job.output, re.M)
    assert any(p.startswith(COLLECTION_PLAYBOOKS + playbook) for p in task_paths), _tail(job)
    assert not any(TOP in p for p in task_paths), "a task ran from the checkout, not the EE"


@pytest.fixture(scope="module")
def prepared(lab):
    job = run_job(lab, "prepare.yml", "prepare")
    assert job.rc == 0, _tail(job)
    return lab


@pytest.fixture(scope="module")
def audit_as_found(prepared):
    # The inventory describes the hardened site (DICOM TLS); the packaged Orthanc speaks
    # plain DICOM, and the audit must probe what is there.
    return run_job(prepared, "audit.yml", "audit-before", "-e", "dicomsec_dicom_tls=false")


@pytest.fixture(scope="module")
def hardened(audit_as_found):
    work = os.path.dirname(os.path.dirname(audit_as_found.reports))
    return run_job(work, "site.yml", "site")


@pytest.fixture(scope="module")
def verified(hardened):
    assert hardened.rc == 0, _tail(hardened)
    return run_job(os.path.dirname(os.path.dirname(hardened.reports)), "verify.yml", "verify")


@pytest.fixture(scope="module")
def audited(verified):
    return run_job(os.path.dirname(os.path.dirname(verified.reports)), "audit.yml", "audit-after")


def test_the_ee_holds_the_collection_its_dependencies_and_their_requirements():
    listed = json.loads(docker("run", "--rm", EE_IMAGE, "ansible-galaxy", "collection", "list",
                               "--format", "json").stdout)
    collections = {}
    for path, found in listed.items():
        for name, info in found.items():
            collections.setdefault(name, []).append((path, info["version"]))
    # One copy of the collection, the tarball's, where AWX looks: none from the checkout.
    assert collections["dicomsec.hardening"] == [("/usr/share/ansible/collections/ansible_collections", VERSION)]
    assert "community.general" in collections and "community.crypto" in collections
    # What requirements.txt and bindep.txt ask for, which only the collection's
    # meta/execution-environment.yml names: the EE definition does not.
    out = docker("run", "--rm", EE_IMAGE, "bash", "-c",
                 "python3 -c 'import pynetdicom, jmespath; print(\"pynetdicom\", pynetdicom.__version__)' && "
                 "dpkg-query -W -f '${Package} ${Status}\\n' openssl ca-certificates openssh-client && "
                 "ansible-runner --version")
    assert re.search(r"^pynetdicom 3\.", out.stdout, re.M), out.stdout
    for package in ("openssl", "ca-certificates", "openssh-client"):
        assert "%s install ok installed" % package in out.stdout, out.stdout


def test_the_ee_cannot_fetch_what_it_lacks_at_run_time():
    # The image carries its dependencies: nothing was left to install when a job starts,
    # and pip's offline settings of the build are gone with the wheels.
    out = docker("run", "--rm", EE_IMAGE, "bash", "-c", "ls /wheelhouse /etc/pip.conf 2>&1; id -u", check=False)
    assert "No such file or directory" in out.stdout and out.stdout.strip().endswith(str(EE_UID))


def test_the_audit_from_the_ee_fails_on_the_site_as_found(audit_as_found):
    job = audit_as_found
    assert job.rc != 0, "the audit passed an Orthanc open to any AE title\n" + _tail(job)
    assert_ran_inside_the_ee(job, "audit.yml")
    failing = [r for r in job.report("audit.json")["records"] if r["verdict"] == "fail"]
    opened = set((r["position"], r["control"]) for r in failing if r["control"] == "any_ae")
    assert opened == {("ee-modality", "any_ae"), ("ee-intruder", "any_ae")}, failing


def test_site_playbook_hardens_the_lab_from_the_ee(hardened):
    assert hardened.rc == 0, _tail(hardened)
    assert_ran_inside_the_ee(hardened, "site.yml")
    assert hardened.recap()["ee-pacs"]["failed"] == 0


def test_verify_playbook_passes_from_inside_the_ee(verified):
    job = verified
    assert job.rc == 0, _tail(job)
    assert_ran_inside_the_ee(job, "verify.yml")
    recap = job.recap()
    assert set(recap) >= {"ee-modality", "ee-intruder", "localhost"}, recap
    assert all(c["failed"] == 0 and c["unreachable"] == 0 for c in recap.values()), recap
    document = job.report("verify.json")
    assert document["summary"]["failed"] == 0 and document["summary"]["inconclusive"] == 0, document["summary"]
    positions = set(r["position"] for r in document["records"])
    assert positions == {"ee-modality", "ee-intruder"}, positions


def test_audit_playbook_passes_from_inside_the_ee(audited):
    job = audited
    assert job.rc == 0, _tail(job)
    assert_ran_inside_the_ee(job, "audit.yml")
    document = job.report("audit.json")
    assert not [r for r in document["records"] if r["verdict"] == "fail"], document["summary"]
    assert set(r["position"] for r in document["records"]) == {"ee-modality", "ee-intruder"}


def _canonical(record):
    return json.dumps(record, sort_keys=True)


def test_shard_reports_merge_into_the_report_of_the_whole_run(verified):
    # Each position's records are what a shard holding that position writes; merged from
    # inside the EE they must give the whole run's report back, record for record.
    whole = verified.report("verify.json")
    work = os.path.dirname(os.path.dirname(verified.reports))
    root = os.path.join(work, "reports", "shards")
    for position in sorted(set(r["position"] for r in whole["records"])):
        shard = os.path.join(root, position)
        os.makedirs(shard)
        with open(os.path.join(shard, "verify.json"), "w") as handle:
            json.dump(dict(whole, records=[r for r in whole["records"] if r["position"] == position]), handle)
    for path, dirs, _files in os.walk(root):
        for entry in [path] + [os.path.join(path, d) for d in dirs]:
            os.chown(entry, EE_UID, 0)
    job = run_job(work, "merge_reports.yml", "merge", "-e", "report_root=/runner/lab/reports/shards")
    assert job.rc == 0, _tail(job)
    with open(os.path.join(root, "estate", "verify.json")) as handle:
        merged = json.load(handle)
    assert sorted(map(_canonical, merged["records"])) == sorted(map(_canonical, whole["records"]))
    assert merged["summary"] == whole["summary"]
    assert os.path.exists(os.path.join(root, "estate", "verify.junit.xml"))


def test_merging_without_any_shard_report_is_refused(lab):
    job = run_job(lab, "merge_reports.yml", "merge-none", "-e", "report_root=/runner/lab/reports/none")
    assert job.rc != 0
    assert "no verify.json in any directory below report_root (/runner/lab/reports/none)" in job.output
