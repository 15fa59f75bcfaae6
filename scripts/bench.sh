#!/usr/bin/env bash
# Runs the benchmark set against RabbitMQ and writes BENCHMARKS.md and
# bench/ratios.svg from the reports in bench/*.json.
#
#   scripts/bench.sh                      # every scenario
#   scripts/bench.sh classroom churn      # only these (others keep their last report)
#
# Scenarios: classroom celebrity many-to-many churn scale (see
# src/simulate/scenario.rs). Each runs in a fresh vhost with a fresh database,
# starts target/release/youtube_server as a child process, and measures the
# plain-lapin ceiling of the same shape right after. Extra flags for every
# run go in SIMULATE_FLAGS (e.g. SIMULATE_FLAGS="--seed 2").
#
# The whole set takes 40 minutes or more on a 2-core machine: many-to-many
# alone takes 20 to 25 (10,000 inboxes, 100,000 subscriptions, 300,000
# deliveries, twice). Scenarios with 10,000 inboxes can exhaust RabbitMQ 3.10's
# memory when run back to back; run them one at a time on a fresh broker to
# compare runs.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/broker.sh
source scripts/lib/broker.sh
rust_toolchain_check || exit 1
# A benchmark uses the broker that runs; it never starts or installs one.
YTNOTIFY_NO_INSTALL=1 ensure_broker || exit 1

all=(classroom celebrity many-to-many churn scale)
if [ $# -gt 0 ]; then
    scenarios=("$@")
else
    scenarios=("${all[@]}")
fi
for scenario in "${scenarios[@]}"; do
    if [[ ! " ${all[*]} " == *" $scenario "* ]]; then
        echo "bench.sh: unknown scenario '$scenario'; use: ${all[*]}" >&2
        exit 2
    fi
done

cargo build --release --workspace --locked --quiet
mkdir -p bench

failed=()
for scenario in "${scenarios[@]}"; do
    echo "== $scenario" >&2
    # shellcheck disable=SC2086 # SIMULATE_FLAGS is a list of flags
    if ! target/release/simulate run --preset "$scenario" --out "bench/$scenario.json" ${SIMULATE_FLAGS:-}; then
        failed+=("$scenario")
    fi
done

machine=bench/machine.md
{
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores" \
        "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')," \
        "$(free -h | awk '/^Mem:/ {print $2}') memory), RabbitMQ $(rabbitmqctl -q version 2>/dev/null || echo unknown)," \
        "$(rustc --version | cut -d' ' -f1-2), release build; server as a child process on the same machine."
} >"$machine"

reports=()
for scenario in "${all[@]}"; do
    [ -f "bench/$scenario.json" ] && reports+=("bench/$scenario.json")
done
target/release/simulate render --markdown BENCHMARKS.md --machine "$machine" \
    --plot bench/ratios.svg "${reports[@]}"
echo "bench.sh: wrote BENCHMARKS.md and bench/ratios.svg from ${reports[*]}" >&2

if [ ${#failed[@]} -gt 0 ]; then
    echo "bench.sh: ${failed[*]}: the run failed or its check found losses or duplicates" >&2
    exit 1
fi
