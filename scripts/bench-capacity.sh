#!/usr/bin/env bash
# Capacity of a gatehouse HALB at the latency SLO (bench issue, `gatehouse-bench capacity`).
#
# gatehouse runs as a HALB in plain L4 mode (one worker, pinned to CPU 0 with taskset,
# log_level = "warn") in front of RDP stand-ins; the stand-ins and gatehouse-bench run on
# CPU 1. `gatehouse-bench capacity` ramps office-profile sessions (10 input events/s of 80 B
# up, 1,200 B mean updates down, a 60 KB burst every 30 s) and, at each step, runs the same
# load directly against the first stand-in and then through gatehouse; it stops when the
# added p99 (through minus direct) passes the SLO, when sessions fail, when the direct
# baseline itself passes the SLO (the load generator is then the limit), or at gatehouse's
# open-files limit. It reports the sessions held, CPU per session-second, RSS per session and
# the capacity those extrapolate to for a node of --node-cpus / --node-mem.
#
# The issue asks for two figures: a HALB in TLS passthrough and a gateway in Gateway SSL
# mode. TLS and the gateway are not built yet, so this measures the HALB in plain L4 mode;
# the Gateway SSL figure waits for the TLS and gateway issues.
#
# Writes the figures and the exact command between <!-- capacity:begin --> and
# <!-- capacity:end --> of BENCHMARKS.md (other sections are left alone).
#
# Usage: scripts/bench-capacity.sh [--slo 10ms] [--node-cpus 2] [--node-mem 2GiB]
#          [--standins N] [--start N] [--growth F] [--max-sessions N] [--refine N]
#          [--confirm N] [--warmup D] [--duration D] [--plot FILE.svg] [--no-write] [--gatehouse PATH]
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

SLO=10ms
NODE_CPUS=2
NODE_MEM=2GiB
STANDINS=2
START=500
GROWTH=2
MAX_SESSIONS=100000
REFINE=2
CONFIRM=1
WARMUP=2s
DURATION=5s
PLOT=
WRITE=1
GATEHOUSE_BIN=
ORIG_CMD="scripts/bench-capacity.sh${*:+ $*}"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --slo) SLO=$2; shift 2 ;;
        --node-cpus) NODE_CPUS=$2; shift 2 ;;
        --node-mem) NODE_MEM=$2; shift 2 ;;
        --standins) STANDINS=$2; shift 2 ;;
        --start) START=$2; shift 2 ;;
        --growth) GROWTH=$2; shift 2 ;;
        --max-sessions) MAX_SESSIONS=$2; shift 2 ;;
        --refine) REFINE=$2; shift 2 ;;
        --confirm) CONFIRM=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --plot) PLOT=$2; shift 2 ;;
        --no-write) WRITE=0; shift ;;
        --gatehouse) GATEHOUSE_BIN=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
if ! [[ "$STANDINS" =~ ^[0-9]+$ ]] || [[ "$STANDINS" -lt 1 ]]; then
    echo "--standins takes a positive number" >&2; exit 2
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH=$TARGET_DIR/release/gatehouse-bench
GATEHOUSE=${GATEHOUSE_BIN:-$TARGET_DIR/release/gatehouse}
WORK=$(mktemp -d /tmp/bench-capacity.XXXXXX)
STARTED_PIDS=()

cleanup() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

log() { printf '[bench-capacity] %s\n' "$*" >&2; }

if [[ $(nproc) -lt 2 ]]; then
    echo "needs at least 2 CPUs (proxy on CPU 0, load on CPU 1)" >&2
    exit 1
fi
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
need_packages jq:jq taskset:util-linux ss:iproute2
log "building release binaries into $TARGET_DIR"
if [[ -n "$GATEHOUSE_BIN" ]]; then
    (cd "$ROOT" && cargo build --release -q -p gatehouse-bench)
else
    (cd "$ROOT" && cargo build --release -q -p gatehouse-bench -p gatehouse)
fi


ulimit -n "$(ulimit -Hn)"
standin_ports=()
for i in $(seq 1 "$STANDINS"); do
    out=$WORK/standin-$i.out
    taskset -c 1 "$BENCH" standin --kind rdp --listen 127.0.0.1:0 >"$out" 2>&1 &
    STARTED_PIDS+=("$!")
    for _ in $(seq 1 100); do
        grep -q 'listening on' "$out" && break
        sleep 0.05
    done
    port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$out" | head -1)
    [[ -n "$port" ]] || { echo "rdp stand-in $i did not start: $(cat "$out")" >&2; exit 1; }
    standin_ports+=("$port")
done
log "rdp stand-ins on CPU 1: ${standin_ports[*]}"

PROXY_PORT=$(free_port)
conf=$WORK/gatehouse.toml
{
    echo '[node]'
    echo 'workers = 1'
    echo 'log_level = "warn"'
    echo
    echo '[halb]'
    echo '[[halb.listener]]'
    echo 'name = "rdp"'
    echo "bind = \"127.0.0.1:$PROXY_PORT\""
    echo 'pool = "hosts"'
    echo 'idle_timeout = "8h"'
    echo
    echo '[[halb.pool]]'
    echo 'name = "hosts"'
    echo 'algorithm = "least-connections"'
    echo 'backends = ['
    for i in "${!standin_ports[@]}"; do
        echo "  { name = \"host-$((i + 1))\", address = \"127.0.0.1:${standin_ports[$i]}\" },"
    done
    echo ']'
} >"$conf"
taskset -c 0 "$GATEHOUSE" run -c "$conf" >"$WORK/gatehouse.log" 2>&1 &
GH_PID=$!
STARTED_PIDS+=("$GH_PID")
if ! wait_port "$PROXY_PORT" "$GH_PID"; then
    echo "gatehouse failed to start; its log:" >&2
    cat "$WORK/gatehouse.log" >&2
    exit 1
fi
log "gatehouse (pid $GH_PID) on CPU 0, HALB 127.0.0.1:$PROXY_PORT, open files $(ulimit -n)"

plot_args=()
[[ -n "$PLOT" ]] && plot_args=(--plot "$PLOT")
started=$(date +%s)
json=$WORK/capacity.json
if ! taskset -c 1 "$BENCH" capacity --target "127.0.0.1:$PROXY_PORT" \
    --direct "127.0.0.1:${standin_ports[0]}" --pid "$GH_PID" \
    --slo "$SLO" --start "$START" --growth "$GROWTH" --max-sessions "$MAX_SESSIONS" \
    --refine "$REFINE" --confirm "$CONFIRM" --warmup "$WARMUP" --duration "$DURATION" --sources 16 \
    --node-cpus "$NODE_CPUS" --node-mem "$NODE_MEM" "${plot_args[@]}" --json >"$json"; then
    echo "capacity run failed; gatehouse log:" >&2
    tail -20 "$WORK/gatehouse.log" >&2
    exit 1
fi
elapsed=$(($(date +%s) - started))

# --- section -----------------------------------------------------------------------------
fmt() { jq -r "$1 | if . == null then \"-\" elif type == \"number\" then (. * 10 | round / 10 | tostring) else tostring end" "$json"; }
section=$WORK/section.md
{
    echo "<!-- capacity:begin -->"
    echo "## Capacity at the latency SLO (scripts/bench-capacity.sh)"
    echo
    echo "Command: \`$ORIG_CMD\` (${elapsed} s, $(date -u +%Y-%m-%dT%H:%MZ))."
    echo "Machine: $(nproc) CPUs, $(uname -r), open files $(ulimit -n). gatehouse as a HALB in plain L4"
    echo "mode (one worker on CPU 0, \`log_level = \"warn\"\`, least-connections over $STANDINS RDP"
    echo "stand-ins); stand-ins and gatehouse-bench on CPU 1. Office profile per session: 10 input events/s"
    echo "of 80 B up, an update of 1,200 B mean (200-4,000) down for each, a 60 KB burst every 30 s;"
    echo "latency from an event's intended send time to the last byte of its update. Each step runs"
    echo "${WARMUP} warmup + ${DURATION} measured directly against stand-in 1 and then through gatehouse;"
    echo "added = through minus direct. SLO: added p99 <= $SLO. The ramp grows x$GROWTH from $START, then"
    echo "bisects $REFINE time(s) between the last pass and the first failure; a step failing on the SLO"
    echo "alone is re-run $CONFIRM time(s) before it counts (p99 over a 5 s window on this shared machine"
    echo "has outliers of several ms even without a proxy: see the direct column). CPU is utime+stime of"
    echo "gatehouse from /proc/PID/stat; RSS per session is its growth over the idle RSS."
    echo
    echo "| sessions | client procs | p50 us | p99 us | direct p99 us | added p50 us | added p99 us | CPU-us per session-s | RSS B per session | errors | verdict |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    jq -r '.steps | sort_by(.sessions)[] | [
        .sessions, .client_processes,
        (.latency_us.p50 // null), (.latency_us.p99 // null), (.direct_latency_us.p99 // null),
        .added_p50_us, .added_p99_us, .cpu_us_per_session_s, .rss_bytes_per_session, .errors,
        (if .passed then "pass" else "FAIL" end)]
        | map(if . == null then "-" elif type == "number" then (. * 10 | round / 10 | tostring) else . end)
        | "| " + join(" | ") + " |"' "$json"
    echo
    echo "- Held at the SLO: **$(fmt .held_sessions) sessions**. Stopped: $(fmt .stop_reason) ($(fmt .stop_detail))."
    echo "- At $(fmt .at_slo.sessions) sessions: $(fmt .at_slo.cpu_us_per_session_s) CPU-us per session-second"
    echo "  ($(jq -r '.at_slo.cpu_share // 0 | . * 1000 | round / 10' "$json")% of one CPU), $(fmt .at_slo.rss_bytes_per_session) B of RSS per session."
    echo "- Extrapolated to a node of $NODE_CPUS CPUs / $NODE_MEM: **$(jq -r '.extrapolation.sessions // "-" | if type == "number" then floor else . end' "$json") sessions**"
    echo "  (CPU allows $(jq -r '.extrapolation.sessions_by_cpu // "-" | if type == "number" then floor else . end' "$json"),"
    echo "  memory allows $(jq -r '.extrapolation.sessions_by_memory // "-" | if type == "number" then floor else . end' "$json");"
    echo "  limited by $(fmt .extrapolation.limited_by)). Goal (bench issue): at least twice the reference"
    echo "  appliance's 12,500 sessions per 2 vCPU, i.e. >= 25,000. The extrapolation assumes:"
    jq -r '.extrapolation.assumptions // [] | .[] | "  - " + .' "$json"
    echo
    echo "Gateway SSL mode (TLS offload) and a HALB in TLS passthrough: not measured yet; those"
    echo "figures wait for the TLS and gateway issues. This is the HALB in plain L4 mode."
    echo "<!-- capacity:end -->"
} >"$section"

echo
cat "$section"
log "done in ${elapsed} s"

if [[ "$WRITE" -eq 1 ]]; then
    md=$ROOT/BENCHMARKS.md
    if [[ ! -f "$md" ]]; then
        printf '# Benchmarks\n\nFigures measured on this kind of machine, with the commands that produced them.\n\n' >"$md"
    fi
    if grep -q '<!-- capacity:begin -->' "$md" && grep -q '<!-- capacity:end -->' "$md"; then
        awk -v sec="$section" '
            /<!-- capacity:begin -->/ { while ((getline line < sec) > 0) print line; skip = 1; next }
            /<!-- capacity:end -->/ { skip = 0; next }
            !skip { print }' "$md" >"$WORK/md.new"
        cat "$WORK/md.new" >"$md"
    else
        { echo; cat "$section"; } >>"$md"
    fi
    log "wrote the section into $md"
fi
