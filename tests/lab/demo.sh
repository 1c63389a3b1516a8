#!/usr/bin/env bash
# `make demo`: bring the reference estate up as it is usually found (two hospitals and a
# cloud PACS, every Orthanc as Debian packages it), attack it, harden it with
# playbooks/site.yml, prove the result with real DICOM associations from every probe
# position (playbooks/verify.yml) and attack it again (playbooks/audit.yml), then print
# the report. The before and the after are assertions of the scenario, not only
# reports: the demo fails if either is not what it says. The hosts stay up for
# exploring; `make lab-down` removes them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

scenario=site
say() { printf '\n== %s\n' "$*"; }

log=$(mktemp)
# Kept after the demo: the JSON, JUnit XML and HTML reports of every run are its result.
reports=$PWD/build/demo-reports
rm -rf "$reports"
mkdir -p "$reports"
trap 'rm -f "$log"' EXIT
# prepare.yml and verify.yml write the audit reports here.
export DICOMSEC_AUDIT_REPORT_DIR="$reports"
quiet() { "$@" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }; }
# One line per host and task result of the tasks whose names match $1, from molecule's
# output in $log. Molecule draws a box around ansible's output and wraps long task names,
# so a name is read up to its closing bracket.
task_results() {
    sed 's/\x1b\[[0-9;]*m//g' "$log" | awk -v names="$1" '
        { sub(/^[[:space:]]*│ ?/, "") }
        /TASK \[/ { task = $0; sub(/.*TASK \[/, "", task); open = 1 }
        open && !/TASK \[/ { line = $0; sub(/^[[:space:]]+/, "", line); task = task " " line }
        open { if (task ~ /\]/) { sub(/\].*$/, "", task); open = 0 }; next }
        task ~ names && match($0, /(ok|changed|fatal|failed): \[site-[a-z0-9-]+\]/) {
            result = substr($0, RSTART, RLENGTH); label = ""
            if (match($0, /\(item=[^)]*\)/)) label = " " substr($0, RSTART, RLENGTH)
            print "  " result "  " task label
        }' || true
}
show_reports() {
    for f in "$1"/*.txt; do
        [ -e "$f" ] || continue
        sed 's/^/  /' "$f"
        echo
    done
}

say "Creating the estate: Hospital A (probe, IPsec gateway), Hospital B (PACS, probe, guest segment), the cloud (IPsec gateway, DICOM gateway, PACS), a remote radiologist and an attacker on the internet"
quiet molecule destroy -s "$scenario"
# `molecule create` runs the scenario's prepare as well: the estate's PKI (every probe, the
# attackers' too, holds a valid client certificate), each Orthanc as packaged, and the
# attack matrix of playbooks/audit.yml against it.
quiet molecule create -s "$scenario"

say "Before: each Orthanc as packaged, attacked from every position (playbooks/audit.yml)"
show_reports "$reports/before"
# The scenario asserts the "before": every position found the packaged Orthanc open.
task_results '^Fail unless each PACS was found open'

say "Hardening: playbooks/site.yml (nftables_whitelist, strongswan_tunnel, pacs_identity, nginx_stream_proxy, derived from one estate model)"
quiet molecule converge -s "$scenario"
# The play recap of the run: one line per host.
sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -Eo 'site-[a-z0-9-]+ +: ok=[0-9]+ +changed=[0-9]+ +unreachable=[0-9]+ +failed=[0-9]+' | sed 's/^/  /' || true

say "Proving it: DICOM associations from each position (playbooks/verify.yml), then the attack matrix again"
if molecule verify -s "$scenario" >"$log" 2>&1; then
    verdict="hardened and proven"
else
    verdict="NOT proven (output below)"
fi
# What the scenario's own proofs came to, beyond verify.yml's report: the audit messages
# of verify's attempts parsed at the audit record repository, the tunnel in the IPsec
# gateways' journals, and the guest segment's attacker's credentials accepted from the
# ultrasound's address.
task_results '^(Fail unless every expected audit message|Fail if a passcode|Fail unless the journal says|C-ECHO Hospital B|Associate in plain)'
show_reports "$reports/after"

say "Report"
printf '  %-17s %-9s %s\n' HOST SYSTEMD ADDRESSES
for h in $(docker ps --filter label=dicomsec.scenario="$scenario" --format '{{.Names}}' | sort); do
    state=$(docker exec "$h" systemctl is-system-running 2>/dev/null || true)
    addrs=$(docker exec "$h" ip -o addr show scope global | awk '{print $4}' | paste -sd' ')
    printf '  %-17s %-9s %s\n' "$h" "$state" "$addrs"
done
echo
# Per site and control, from the reports verify.yml and audit.yml wrote.
for report in "$reports"/verify/verify.json "$reports"/after/audit.json; do
    [ -e "$report" ] || continue
    python3 - "$report" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
print("  %s (%s): %d checks, %d passed, %d failed, %d inconclusive" % (
    doc["title"], sys.argv[1].rsplit("/", 2)[-2], doc["summary"]["total"], doc["summary"]["passed"],
    doc["summary"]["failed"], doc["summary"]["inconclusive"]))
sites = {}
for r in doc["records"]:
    counts = sites.setdefault(r.get("site", "default"), {}).setdefault(r.get("control", "?"), [0, 0, 0])
    counts[{"pass": 0, "fail": 1}.get(r["verdict"], 2)] += 1
for site, controls in sorted(sites.items()):
    print("    site %s: %s" % (site, ", ".join("%s %d/%d passed" % (c, n[0], sum(n))
                                         for c, n in sorted(controls.items()))))
PY
done
for page in "$reports"/verify/verify.html "$reports"/after/audit.html; do
    [ -e "$page" ] && echo "  report: $page"
done
echo "  verdict: the estate is $verdict"
echo "  this estate shows: nftables_whitelist, strongswan_tunnel, pacs_identity, nginx_stream_proxy and"
echo "  atna_audit (playbooks/site.yml), and the dicom_association and dicom_audit modules"
echo "  (playbooks/verify.yml, playbooks/audit.yml); 'molecule test -s site' also checks idempotence"
echo "  and site.yml --check --diff."
echo
echo "  The hosts stay up for you to explore (docker exec -it site-cloud-gw bash)."
echo "  'make lab-down' removes them and stops the Docker engine if the lab started it."
if [ "$verdict" != "hardened and proven" ]; then
    cat "$log" >&2
    exit 1
fi
