#!/usr/bin/env bash
# Measures the celebrity scenario both ways, in the same run: each upload
# copied into every subscriber's inbox (the servers' default), and appended
# once to the celebrity's stream that each subscriber's session reads
# (youtube_server --celebrities-from). Writes bench/celebrity-<size>-<way>.json
# and the comparison table, bench/celebrity.md, which BENCHMARKS.md quotes.
#
#   sudo scripts/bench-celebrity.sh                 # 10,000 and 100,000 subscribers
#   sudo scripts/bench-celebrity.sh 2000            # other sizes
#   sudo ROUNDS=2 scripts/bench-celebrity.sh 10000  # inbox, stream, inbox, stream
#   sudo AWAY=0.9 scripts/bench-celebrity.sh 10000  # 90 % of the users away for a while
#   sudo WAYS=inbox scripts/bench-celebrity.sh 100000   # one way only
#
# Each run has a private RabbitMQ node of its own, booted for it
# (scripts/lib/node.sh; root, as the node runs with root's Erlang cookie), so
# that the broker's memory is the run's alone; the node's memory and CPU
# come from /proc, and its open files are sampled every second. Extra flags
# for every run go in SIMULATE_FLAGS. A run that fails (a check that finds a
# loss, a broker out of file descriptors) is recorded as failed in the table
# with its last line, and the others go on.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/broker.sh
source scripts/lib/broker.sh
# shellcheck source=scripts/lib/node.sh
source scripts/lib/node.sh
rust_toolchain_check || exit 1

# From how many subscribers a YouTuber is a celebrity in the stream runs:
# the scenario's one YouTuber has them all.
CELEBRITIES_FROM=${CELEBRITIES_FROM:-1000}
ROUNDS=${ROUNDS:-1}
read -r -a ways <<<"${WAYS:-inbox stream}"
for way in "${ways[@]}"; do
    if [[ $way != inbox && $way != stream ]]; then
        echo "bench-celebrity.sh: unknown way '$way' in WAYS; use inbox, stream or both" >&2
        exit 2
    fi
done
# The share of users that close their session for a while during the
# uploads and come back (the simulator's --offline-share): what each way
# keeps for them meanwhile differs most.
AWAY=${AWAY:-0}
variant=
if [[ $AWAY != 0 ]]; then
    variant="-away$(awk -v share="$AWAY" 'BEGIN { printf "%d", share * 100 }')"
fi
sizes=("$@")
if ((${#sizes[@]} == 0)); then
    sizes=(10000 100000)
fi
for size in "${sizes[@]}"; do
    if ! [[ $size =~ ^[0-9]+$ ]] || ((size < CELEBRITIES_FROM)); then
        echo "bench-celebrity.sh: '$size' is not a number of subscribers of at least $CELEBRITIES_FROM" >&2
        exit 2
    fi
done
if ! command -v jq >/dev/null 2>&1; then
    echo "bench-celebrity.sh: jq is needed for the table: sudo apt-get install -y jq" >&2
    exit 1
fi

cargo build --release --workspace --locked --quiet
simulate="${CARGO_TARGET_DIR:-target}/release/simulate"
mkdir -p bench
work=$(mktemp -d /tmp/ytnotify-bench-celebrity.XXXXXX)
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    node_destroy
    rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "bench-celebrity.sh: interrupted" >&2; exit 130' INT TERM
# Every stream reader holds files open in the broker: the node inherits
# this shell's limit, raised as far as it goes.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# sample_files PID OUT: writes the greatest number of files PID held open,
# sampled every second, to OUT until PID is gone or the file STOP appears.
sample_files() {
    local pid=$1 out=$2 peak=0 now
    while [[ -d /proc/$pid && ! -e $out.stop ]]; do
        now=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        ((now > peak)) && peak=$now
        printf '%s\n' "$peak" >"$out"
        sleep 1
    done
}

# why_failed STATUS: the simulator's own last word on a failed run, or how
# it ended.
why_failed() {
    local said
    said=$(grep '^simulate:' "$work/stderr" | tail -n 1)
    if [[ -n $said ]]; then
        printf '%s\n' "$said"
    elif (($1 > 128)); then
        printf 'stopped by signal %d\n' "$(($1 - 128))"
    else
        printf 'exit %d\n' "$1"
    fi
}

# run SIZE WAY: one run on a node booted for it.
run() {
    local size=$1 way=$2 from=0 status=0 pid
    [[ $way == stream ]] && from=$CELEBRITIES_FROM
    node_create "$work/$size-$way" && node_boot || return 1
    pid=$(node_pid)
    echo "bench-celebrity.sh: $size subscribers, $way: node $NODE_NAME (pid $pid, at most $(ulimit -n) open files)" >&2
    sample_files "$pid" "$work/files" &
    local sampler=$!
    # shellcheck disable=SC2086 # SIMULATE_FLAGS is a list of flags
    "$simulate" run --preset celebrity --name "celebrity-$size$variant-$way" \
        --users "$size" --subscriptions "$size" --celebrities-from "$from" --offline-share "$AWAY" \
        --no-ceiling --quiet --amqp-url "$NODE_URL" --no-fresh-vhost --broker-pid "$pid" \
        --out "bench/celebrity-$size$variant-$way.json" ${SIMULATE_FLAGS:-} \
        2> >(tee "$work/stderr" >&2) || status=$?
    touch "$work/files.stop"
    wait "$sampler" || true
    rm -f "$work/files.stop"
    local files
    files=$(cat "$work/files" 2>/dev/null || echo 0)
    if ((status == 0)); then
        jq --argjson files "$files" '.broker.peak_open_files = $files' \
            "bench/celebrity-$size$variant-$way.json" >"$work/report" &&
            mv "$work/report" "bench/celebrity-$size$variant-$way.json"
    else
        jq -n --arg size "$size" --arg way "$way" --argjson files "$files" \
            --arg why "$(why_failed "$status")" \
            '{failed: $why, scenario: {name: ("celebrity-" + $size + "-" + $way)}, broker: {peak_open_files: $files}}' \
            >"bench/celebrity-$size$variant-$way.json"
    fi
    node_destroy
    return "$status"
}

failed=0
for size in "${sizes[@]}"; do
    for ((round = 1; round <= ROUNDS; round++)); do
        for way in "${ways[@]}"; do
            run "$size" "$way" || failed=1
        done
    done
done

# The table: one row per size and way, the stream's figures also as a
# ratio to the inboxes' of the same size.
{
    echo "| subscribers | away | way | check | deliveries/s | upload to its last subscriber (p50 / max) | broker memory after set-up / peak | broker CPU during the run | broker open files (peak) | server CPU during the run |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    for size in "${sizes[@]}"; do
        for way in "${ways[@]}"; do
            jq -r --arg size "$size" --arg way "$way" --arg away "$AWAY" '
                def n(x): if x == null then "–" else (x * 10 | round / 10 | tostring) end;
                if .failed then
                    "| \($size) | \($away) | \($way) | failed: \(.failed) | | | | | \(.broker.peak_open_files) | |"
                else
                    "| \($size) | \($away) | \($way) | \(if .check.ok then "OK" else "FAILED" end), \(.check.lost) lost, \(.check.duplicates) dup | \(.run.deliveries_per_s | round) | \(n(.run.fanout_ms.p50)) / \(n(.run.fanout_ms.max)) ms | \(n(.broker.rss_mb_after_setup)) / \(n(.broker.peak_rss_mb)) MB | \(n(.broker.cpu_seconds)) s | \(.broker.peak_open_files) | \(n(.server.cpu_seconds)) s |"
                end' "bench/celebrity-$size$variant-$way.json"
        done
    done
    echo
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores, $(free -h | awk '/^Mem:/ {print $2}') memory," \
        "RabbitMQ $(rabbitmqctl -q version 2>/dev/null || echo unknown), a private node per run, at most $(ulimit -n) open files;" \
        "the celebrity preset (one YouTuber, 20 uploads in a window of 20), release build; streams from $CELEBRITIES_FROM subscribers."
} >"bench/celebrity$variant.md"
cat "bench/celebrity$variant.md"
exit "$failed"
