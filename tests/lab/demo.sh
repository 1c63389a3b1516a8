#!/usr/bin/env bash
# `make demo`: bring the lab topology up, prove it healthy, print a report.
#
# Until the hardening roles and the site playbooks land, the demo stops at a
# healthy lab: the report says so and names what is still to come.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

scenario=lab
say() { printf '\n== %s\n' "$*"; }

log=$(mktemp)
trap 'rm -f "$log"' EXIT
quiet() { "$@" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }; }

say "Creating the lab hosts (scenario '$scenario')"
quiet molecule create -s "$scenario"
quiet molecule converge -s "$scenario"

say "Proving the lab healthy: systemd, addressing, reachability, nftables"
if molecule verify -s "$scenario" >"$log" 2>&1; then
    verdict="healthy"
else
    verdict="NOT healthy"
fi
grep -Eo '[0-9]+ (passed|failed)[^=]*' "$log" | tail -n 1 | sed 's/^/  tests: /'

say "Lab report"
printf '  %-12s %-9s %-9s %s\n' HOST SYSTEMD NFTABLES ADDRESSES
for h in $(docker ps --filter label=dicomsec.scenario="$scenario" --format '{{.Names}}' | sort); do
    state=$(docker exec "$h" systemctl is-system-running 2>/dev/null || true)
    addrs=$(docker exec "$h" ip -o addr show scope global | awk '{print $4}' | paste -sd' ')
    nft=$(docker exec "$h" nft --version 2>/dev/null | awk '{print $2}')
    printf '  %-12s %-9s %-9s %s\n' "$h" "$state" "$nft" "$addrs"
done
echo
echo "  verdict: the lab is $verdict"
echo "  available: the nftables_whitelist and pacs_identity roles (molecule scenarios of"
echo "  the same names) and the dicom_association / dicom_audit verification modules."
echo "  still to come: nginx_stream_proxy, strongswan_tunnel and"
echo "  playbooks/site.yml + verify.yml, which will harden this lab and prove it"
echo "  with real DICOM associations."
echo
echo "  The lab stays up for you to explore (docker exec -it lab-pacs bash)."
echo "  'make lab-down' removes it and stops the Docker engine if the lab started it."
if [ "$verdict" != healthy ]; then
    cat "$log" >&2
    exit 1
fi
