#!/usr/bin/env bash
# Failover gap seen by a client, gatehouse vs keepalived 2.2.7 (issue 6), in one topology and
# one run: namespaces a and b (the HALB pair), c (a client opening connections to VIP:3389 in a
# loop), g (gateway stand-ins) on a bridge in a fifth namespace; 0.1 s adverts, priorities
# 150/100. For each of gatehouse and keepalived, the master is stopped with SIGKILL (a crash:
# keepalived and the listener on a are killed) and with SIGTERM (graceful: priority-0 advert).
# With keepalived the VIP is served by a gatehouse listener without [[halb.vrrp]] (freebind),
# as keepalived + a load balancer is deployed, so only the VRRP side differs.
#
# The measurement is the ignored test `bench_failover` of the `vrrp` test binary (it shares
# the lab code of the VRRP end-to-end tests). Needs root, iproute2 and keepalived.
#
# Writes the table between <!-- failover:begin --> and <!-- failover:end --> in BENCHMARKS.md
# (the markers are appended when absent; other sections are left alone).
#
# Usage: scripts/bench-failover.sh [--rounds N] [--profile release|dev] [--no-write]
set -euo pipefail

ROUNDS=5
PROFILE=release
WRITE=1
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --profile) PROFILE=$2; shift 2 ;;
        --no-write) WRITE=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-failover: needs root (network namespaces)" >&2; exit 1; }
command -v keepalived >/dev/null || { echo "bench-failover: keepalived not installed" >&2; exit 1; }

out=$(mktemp)
trap 'rm -f "$out"' EXIT
start=$(date +%s)
BENCH_FAILOVER_ROUNDS=$ROUNDS BENCH_FAILOVER_OUT=$out \
    cargo test --profile "$PROFILE" --test vrrp -- --ignored --exact bench::bench_failover --nocapture
[ -s "$out" ] || { echo "bench-failover: no table written (skipped?)" >&2; exit 1; }

{
    echo "## VRRP failover, gatehouse vs keepalived (scripts/bench-failover.sh)"
    echo
    echo "Command: \`scripts/bench-failover.sh --rounds $ROUNDS --profile $PROFILE\` ($(( $(date +%s) - start )) s, $(date -u +%Y-%m-%dT%H:%MZ))."
    echo "Machine: $(nproc) CPUs, $(uname -r), $(keepalived --version 2>&1 | head -1)."
    echo
    cat "$out"
} > "$out.section"
mv "$out.section" "$out"
cat "$out"

[ "$WRITE" = 1 ] || exit 0
bench=BENCHMARKS.md
begin='<!-- failover:begin -->'
end='<!-- failover:end -->'
[ -f "$bench" ] || printf '# Benchmarks\n' > "$bench"
if ! grep -qxF "$begin" "$bench"; then
    printf '\n%s\n%s\n' "$begin" "$end" >> "$bench"
fi
awk -v b="$begin" -v e="$end" -v f="$out" '
    $0 == b { print; while ((getline line < f) > 0) print line; skip = 1; next }
    $0 == e { skip = 0 }
    !skip { print }
' "$bench" > "$bench.tmp"
mv "$bench.tmp" "$bench"
echo "bench-failover: table written to $bench"
