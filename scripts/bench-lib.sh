# Shell helpers shared by the benchmark scripts (sourced, not run).
#
# need_packages TOOL:PACKAGE ...  installs the Debian package of every missing tool
# free_port                       prints a loopback port nothing uses now
# wait_port PORT PID              waits until PID listens on PORT (fails if PID exits)

need_packages() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    echo "installing from Debian: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 30000))
        if ! ss -Htan "sport = :$port" | grep -q .; then
            echo "$port"
            return
        fi
    done
}

wait_port() {
    local port=$1 pid=$2 i
    for i in $(seq 1 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "process $pid exited before listening on $port" >&2
            return 1
        fi
        if ss -Htln "sport = :$port" | grep -q .; then
            return 0
        fi
        sleep 0.05
    done
    echo "nothing listens on port $port after 5 s" >&2
    return 1
}
