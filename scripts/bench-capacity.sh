#!/usr/bin/env bash
# Capacity of gatehouse at the latency SLO (bench issue, `gatehouse-bench capacity`).
#
# --mode picks what is measured (the process under test always runs one worker, pinned to
# CPU 0, log_level = "warn"; everything else runs on CPU 1):
#   l4                a HALB in plain L4 mode in front of RDP stand-ins (the default);
#   halb-passthrough  a HALB alone whose listener has tls = "passthrough", in front of RDP
#                     stand-ins that terminate TLS: TLS end to end, client to stand-in;
#   gateway-ssl       gateway gw-1 alone in Gateway SSL mode (TLS offload), with broker-1 and
#                     stand-in host agents: each session logs in once per user, launches,
#                     opens TLS to gw-1, upgrades to a tunnel and reaches a plain RDP stand-in.
# In l4 mode this script starts the stand-ins and gatehouse; in the TLS modes
# `gatehouse-bench capacity` starts its own system under test (certificates, stand-ins,
# gatehouse) and pins it with --target-cpu.
#
# `gatehouse-bench capacity` ramps office-profile sessions (10 input events/s of 80 B up,
# 1,200 B mean updates down, a 60 KB burst every 30 s) and, at each step, runs the same load
# directly against a stand-in (over TLS in the TLS modes) and then through gatehouse; it
# stops when the added p99 (through minus direct) passes the SLO, when sessions fail, when
# the direct baseline itself passes the SLO (the load generator is then the limit), or at
# gatehouse's open-files limit. It reports the sessions held, CPU per session-second, RSS per
# session and the capacity those extrapolate to for a node of --node-cpus / --node-mem.
#
# Writes the figures and the exact command into the capacity section of BENCHMARKS.md,
# between <!-- capacity:MODE:begin --> and <!-- capacity:MODE:end --> inside
# <!-- capacity:begin --> ... <!-- capacity:end -->: the other modes' figures stay.
#
# Usage: scripts/bench-capacity.sh [--mode l4|halb-passthrough|gateway-ssl] [--slo 10ms]
#          [--node-cpus 2] [--node-mem 2GiB] [--standins N] [--start N] [--growth F]
#          [--max-sessions N] [--refine N] [--confirm N] [--warmup D] [--duration D]
#          [--open-rate N] [--plot FILE.svg] [--no-write] [--gatehouse PATH]
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

MODE=l4
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
OPEN_RATE=1000
WRITE=1
GATEHOUSE_BIN=
ORIG_CMD="scripts/bench-capacity.sh${*:+ $*}"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --mode) MODE=$2; shift 2 ;;
        --open-rate) OPEN_RATE=$2; shift 2 ;;
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
case "$MODE" in
    l4|halb-passthrough|gateway-ssl) ;;
    *) echo "--mode takes l4, halb-passthrough or gateway-ssl" >&2; exit 2 ;;
esac

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
load_start=$(cut -d' ' -f1 /proc/loadavg)
plot_args=()
[[ -n "$PLOT" ]] && plot_args=(--plot "$PLOT")
json=$WORK/capacity.json
started=$(date +%s)

if [[ "$MODE" == l4 ]]; then
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

    if ! taskset -c 1 "$BENCH" capacity --target "127.0.0.1:$PROXY_PORT" \
        --direct "127.0.0.1:${standin_ports[0]}" --pid "$GH_PID" \
        --slo "$SLO" --start "$START" --growth "$GROWTH" --max-sessions "$MAX_SESSIONS" \
        --refine "$REFINE" --confirm "$CONFIRM" --warmup "$WARMUP" --duration "$DURATION" --sources 16 \
        --node-cpus "$NODE_CPUS" --node-mem "$NODE_MEM" "${plot_args[@]}" --json >"$json"; then
        echo "capacity run failed; gatehouse log:" >&2
        tail -20 "$WORK/gatehouse.log" >&2
        exit 1
    fi
else
    # The TLS modes start their own system under test; this process and its children
    # (stand-ins, broker, agents, client workers) stay on CPU 1, the target moves to CPU 0.
    log "capacity --mode $MODE (system under test started by gatehouse-bench), open files $(ulimit -n)"
    if ! taskset -c 1 "$BENCH" capacity --mode "$MODE" --gatehouse "$GATEHOUSE" --target-cpu 0 \
        --hosts "$STANDINS" --open-rate "$OPEN_RATE" \
        --slo "$SLO" --start "$START" --growth "$GROWTH" --max-sessions "$MAX_SESSIONS" \
        --refine "$REFINE" --confirm "$CONFIRM" --warmup "$WARMUP" --duration "$DURATION" --sources 16 \
        --node-cpus "$NODE_CPUS" --node-mem "$NODE_MEM" "${plot_args[@]}" --json >"$json"; then
        echo "capacity run failed (see above)" >&2
        exit 1
    fi
fi
elapsed=$(($(date +%s) - started))
load_end=$(cut -d' ' -f1 /proc/loadavg)

# --- section -----------------------------------------------------------------------------
fmt() { jq -r "$1 | if . == null then \"-\" elif type == \"number\" then (. * 10 | round / 10 | tostring) else tostring end" "$json"; }
block=$WORK/block.md
case "$MODE" in
    l4) title="HALB in plain L4 mode (\`--mode l4\`)" ;;
    halb-passthrough) title="HALB alone in TLS passthrough (\`--mode halb-passthrough\`)" ;;
    gateway-ssl) title="Gateway alone in Gateway SSL mode (\`--mode gateway-ssl\`)" ;;
esac
{
    echo "<!-- capacity:$MODE:begin -->"
    echo "### $title"
    echo
    echo "Command: \`$ORIG_CMD\` (${elapsed} s, $(date -u +%Y-%m-%dT%H:%MZ))."
    echo "Machine: $(nproc) CPUs, $(uname -r), open files $(ulimit -n); 1-minute load average $load_start at"
    echo "the start and $load_end at the end (the machine is shared: figures are pessimistic)."
    case "$MODE" in
    l4)
    echo "gatehouse as a HALB in plain L4"
    echo "mode (one worker on CPU 0, \`log_level = \"warn\"\`, least-connections over $STANDINS RDP"
    echo "stand-ins); stand-ins and gatehouse-bench on CPU 1."
    ;;
    halb-passthrough)
    echo "gatehouse as a HALB alone, one listener with \`tls = \"passthrough\"\` (one worker on CPU 0,"
    echo "\`log_level = \"warn\"\`, least-connections over $STANDINS RDP stand-ins that terminate TLS 1.3 with a"
    echo "self-signed ECDSA P-256 certificate); stand-ins and gatehouse-bench (and its client processes) on"
    echo "CPU 1. Each session opens TCP and a full TLS 1.3 handshake through the HALB, verified against the"
    echo "stand-in's own certificate, during the warmup; the profile then runs inside TLS. The direct"
    echo "baseline is the same TLS sessions straight to stand-in 1, so \"added\" is what the HALB adds."
    ;;
    gateway-ssl)
    echo "gatehouse as gateway gw-1 alone (one worker on CPU 0, \`log_level = \"warn\"\`, front listener"
    echo "\`tls = \"auto\"\` with its farm certificate), with broker-1 and stand-in host agents on CPU 1 and"
    echo "$STANDINS plain RDP stand-ins as session hosts. A few users log in once (argon2id is not per"
    echo "session); before each run one ticket per session is launched (\`POST /api/v1/launch\` on kept-alive"
    echo "TLS connections); each session then opens TLS 1.3 to gw-1 (full handshake), sends \`GET"
    echo "/api/v1/tunnel\` + \`Upgrade\` with its ticket and session token, gets the \`101\` and runs the"
    echo "profile through the tunnel. Launches, handshakes and tunnel set-ups all happen before the"
    echo "measured window. The direct baseline is the same TLS sessions straight to a TLS-terminating"
    echo "stand-in, so \"added\" is what the gateway adds (decrypt, relay, plain TCP to the host and back)."
    ;;
    esac
    echo "Office profile per session: 10 input events/s"
    echo "of 80 B up, an update of 1,200 B mean (200-4,000) down for each, a 60 KB burst every 30 s;"
    echo "latency from an event's intended send time to the last byte of its update. Each step runs"
    if [[ "$MODE" == l4 ]]; then
        echo "${WARMUP} warmup + ${DURATION} measured directly against stand-in 1 and then through gatehouse;"
    else
        echo "${WARMUP} warmup (longer when sessions open at more than $OPEN_RATE/s: see the warmup column)"
        echo "+ ${DURATION} measured, directly and then through gatehouse;"
    fi
    echo "added = through minus direct. SLO: added p99 <= $SLO. The ramp grows x$GROWTH from $START, then"
    echo "bisects $REFINE time(s) between the last pass and the first failure; a step failing on the SLO"
    echo "alone is re-run $CONFIRM time(s) before it counts (p99 over a 5 s window on this shared machine"
    echo "has outliers of several ms even without a proxy: see the direct column). CPU is utime+stime of"
    echo "gatehouse from /proc/PID/stat; RSS per session is its growth over the idle RSS. \"Waited for a"
    echo "CPU\" is the time gatehouse's threads were runnable but not running in the window"
    echo "(/proc/PID/task/*/schedstat): other tasks on CPU 0, which this shared machine has."
    echo
    # The TLS modes add the warmup (it grows with the sessions opened) and what was opened.
    tls=true tls_head=" warmup s | TLS sessions / tunnels / host conns |" tls_rule=" --- | --- |"
    if [[ "$MODE" == l4 ]]; then tls=false tls_head="" tls_rule=""; fi
    echo "| sessions | client procs |$tls_head p50 us | p99 us | direct p99 us | added p50 us | added p99 us | CPU-us per session-s | gatehouse waited for a CPU, % of window | RSS B per session | errors | verdict |"
    echo "| --- | --- |$tls_rule --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    jq -r --argjson tls "$tls" '.steps | sort_by(.sessions)[] | [.sessions, .client_processes]
        + (if $tls then [.warmup_s,
            ((.tls_sessions | tostring) + " / " + (.tunnels | tostring) + " / " + ((.host_connections // "-") | tostring))]
           else [] end)
        + [(.latency_us.p50 // null), (.latency_us.p99 // null), (.direct_latency_us.p99 // null),
            .added_p50_us, .added_p99_us, .cpu_us_per_session_s,
            (if .runqueue_wait_s == null then null else .runqueue_wait_s / .elapsed_s * 100 end),
            .rss_bytes_per_session, .errors,
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
    echo "<!-- capacity:$MODE:end -->"
} >"$block"

echo
cat "$block"
log "done in ${elapsed} s"

# The whole section: the intro, then one block per mode in a fixed order, each block the
# one just measured or the one BENCHMARKS.md already holds.
assemble_section() {
    local md=$1 out=$2 m
    {
        echo "<!-- capacity:begin -->"
        echo "## Capacity at the latency SLO (scripts/bench-capacity.sh)"
        echo
        echo "Sessions of the office profile one gatehouse process holds while the p99 latency it"
        echo "adds stays within the SLO, per mode (\`scripts/bench-capacity.sh --mode MODE\`), with CPU"
        echo "per session-second, RSS per session and what they extrapolate to. Each block says"
        echo "when and how it was measured."
        for m in l4 halb-passthrough gateway-ssl; do
            if [[ "$m" == "$MODE" ]]; then
                echo; cat "$block"
            elif [[ -f "$md" ]] && grep -q "<!-- capacity:$m:begin -->" "$md"; then
                echo
                awk -v b="<!-- capacity:$m:begin -->" -v e="<!-- capacity:$m:end -->" '
                    $0 == b { on = 1 } on { print } $0 == e { on = 0 }' "$md"
            elif [[ "$m" == l4 && -f "$md" ]] && grep -q '<!-- capacity:begin -->' "$md"; then
                # A section from before the per-mode blocks: its figures are the l4 ones.
                echo
                echo "<!-- capacity:l4:begin -->"
                echo "### HALB in plain L4 mode (\`--mode l4\`)"
                echo
                awk '
                    /<!-- capacity:begin -->/ { on = 1; next }
                    /<!-- capacity:end -->/ { on = 0 }
                    !on { next }
                    /^## Capacity at the latency SLO/ { next }
                    /^Gateway SSL mode \(TLS offload\) and a HALB in TLS passthrough: not measured yet/ { skip = 1 }
                    skip && /figures wait for the TLS and gateway issues/ { skip = 0; next }
                    skip { next }
                    { print }' "$md" | sed '/./,$!d' | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}'
                echo "<!-- capacity:l4:end -->"
            fi
        done
        echo "<!-- capacity:end -->"
    } >"$out"
}

if [[ "$WRITE" -eq 1 ]]; then
    md=$ROOT/BENCHMARKS.md
    if [[ ! -f "$md" ]]; then
        printf '# Benchmarks\n\nFigures measured on this kind of machine, with the commands that produced them.\n\n' >"$md"
    fi
    section=$WORK/section.md
    assemble_section "$md" "$section"
    if grep -q '<!-- capacity:begin -->' "$md" && grep -q '<!-- capacity:end -->' "$md"; then
        awk -v sec="$section" '
            /<!-- capacity:begin -->/ { while ((getline line < sec) > 0) print line; skip = 1; next }
            /<!-- capacity:end -->/ { skip = 0; next }
            !skip { print }' "$md" >"$WORK/md.new"
        cat "$WORK/md.new" >"$md"
    else
        { echo; cat "$section"; } >>"$md"
    fi
    log "wrote the $MODE figures into $md"
fi
