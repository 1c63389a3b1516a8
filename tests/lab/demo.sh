#!/usr/bin/env bash
# `make demo`: bring the site up as it is usually found (Orthanc as Debian packages
# it), attack it, harden it with playbooks/site.yml, prove the result with real DICOM
# associations (playbooks/verify.yml) and attack it again (playbooks/audit.yml), then
# print the report. The hosts stay up for exploring; `make lab-down` removes them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

scenario=site
say() { printf '\n== %s\n' "$*"; }

log=$(mktemp)
reports=$(mktemp -d)
trap 'rm -rf "$log" "$reports"' EXIT
# prepare.yml and verify.yml write the audit reports here.
export DICOMSEC_AUDIT_REPORT_DIR="$reports"
quiet() { "$@" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }; }
show_reports() {
    for f in "$1"/*.txt; do
        [ -e "$f" ] || continue
        sed 's/^/  /' "$f"
        echo
    done
}

say "Creating the site: a PACS (Orthanc as packaged), a registered CT, an intruder on the LAN"
quiet molecule destroy -s "$scenario"
quiet molecule create -s "$scenario"

say "Before: the attack matrix against the site as found (playbooks/audit.yml)"
quiet molecule prepare -s "$scenario" --force
show_reports "$reports/before"

say "Hardening: playbooks/site.yml (pacs_identity, nftables_whitelist)"
quiet molecule converge -s "$scenario"
# The play recap of the run: one line per host.
sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -Eo 'site-[a-z]+ +: ok=.*' | tail -n 3 | sed 's/^/  /' || true

say "Proving it: DICOM associations from each position (playbooks/verify.yml), then the attack matrix again"
if molecule verify -s "$scenario" >"$log" 2>&1; then
    verdict="hardened and proven"
else
    verdict="NOT proven (output below)"
fi
# What each position's associations came to (playbooks/verify.yml): C-ECHO accepted
# for the registered CT, an unknown AE title rejected, the intruder turned away.
sed 's/\x1b\[[0-9;]*m//g' "$log" | awk '
    /TASK \[/ { sub(/.*TASK \[/, ""); sub(/\].*/, ""); task = $0; next }
    task ~ /^(C-ECHO|Offer|Expect)/ && match($0, /(ok|fatal): \[site-[a-z]+\]/) {
        print "  " substr($0, RSTART, RLENGTH) "  " task
    }' || true
show_reports "$reports/after"

say "Report"
printf '  %-14s %-9s %s\n' HOST SYSTEMD ADDRESSES
for h in $(docker ps --filter label=dicomsec.scenario="$scenario" --format '{{.Names}}' | sort); do
    state=$(docker exec "$h" systemctl is-system-running 2>/dev/null || true)
    addrs=$(docker exec "$h" ip -o addr show scope global | awk '{print $4}' | paste -sd' ')
    printf '  %-14s %-9s %s\n' "$h" "$state" "$addrs"
done
echo
echo "  verdict: the site is $verdict"
echo "  available: pacs_identity and nftables_whitelist (playbooks/site.yml), the"
echo "  dicom_association and dicom_audit modules (playbooks/verify.yml, playbooks/audit.yml)."
echo "  still to come: the nginx_stream_proxy (user identity in front of Orthanc) and"
echo "  strongswan_tunnel roles."
echo
echo "  The hosts stay up for you to explore (docker exec -it site-pacs bash)."
echo "  'make lab-down' removes them and stops the Docker engine if the lab started it."
if [ "$verdict" != "hardened and proven" ]; then
    cat "$log" >&2
    exit 1
fi
