#!/usr/bin/env bash
# Runs the benchmark set against RabbitMQ and writes BENCHMARKS.md and
# bench/ratios.svg from the reports in bench/*.json.
#
#   scripts/bench.sh                      # every scenario
#   scripts/bench.sh classroom churn      # only these (others keep their last report)
#   sudo scripts/bench.sh --private-node viral   # on a private node of its own
#
# Scenarios: classroom celebrity many-to-many churn scale viral (see
# crates/simulate/src/scenario.rs). Each runs in a fresh vhost with a fresh
# database, starts the release youtube_server as a child process, and measures
# the plain-lapin ceiling of the same shape right after. Extra flags for every
# run go in SIMULATE_FLAGS (e.g. SIMULATE_FLAGS="--seed 2").
#
# The generated table of BENCHMARKS.md holds the notification scenarios;
# viral (likes and comments on one video by 10,000 users) writes
# bench/viral.json only, whose figures BENCHMARKS.md gives in a section of
# their own ("Interactions: a viral video"). A run of viral alone leaves the
# table and bench/machine.md as they are, and prints the machine's line.
#
# --private-node starts a private RabbitMQ node (scripts/lib/node.sh) for
# each scenario, so that each begins on a freshly booted broker and none
# loads the machine's shared one; it needs root, as the node runs with
# root's Erlang cookie. Without it, the broker that runs is used, and never
# started or installed.
#
# The whole set takes 40 minutes or more on a 2-core machine: many-to-many
# alone takes 20 to 25 (10,000 inboxes, 100,000 subscriptions, 300,000
# deliveries, twice). Scenarios with 10,000 inboxes can exhaust RabbitMQ 3.10's
# memory when run back to back; run them one at a time on a fresh broker to
# compare runs (--private-node does).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/broker.sh
source scripts/lib/broker.sh
rust_toolchain_check || exit 1

private=0
if [[ ${1:-} == --private-node ]]; then
    private=1
    shift
    # shellcheck source=scripts/lib/node.sh
    source scripts/lib/node.sh
else
    # A benchmark uses the broker that runs; it never starts or installs one.
    YTNOTIFY_NO_INSTALL=1 ensure_broker || exit 1
fi

table=(classroom celebrity many-to-many churn scale)
apart=(viral)
all=("${table[@]}" "${apart[@]}")
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
simulate="${CARGO_TARGET_DIR:-target}/release/simulate"
mkdir -p bench

work=
if ((private)); then
    work=$(mktemp -d /tmp/ytnotify-bench.XXXXXX)
    # shellcheck disable=SC2317 # run by the EXIT trap
    cleanup() {
        node_destroy
        rm -rf "$work"
    }
    trap cleanup EXIT
    trap 'echo "bench.sh: interrupted" >&2; exit 130' INT TERM
    # The broker's files (classic queues' indexes among them) fare better
    # with more descriptors; the node inherits this shell's limit.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi

# run SCENARIO: one run, on the shared broker or on a node booted for it.
run() {
    local scenario=$1 status=0
    if ((private)); then
        node_create "$work/$scenario" && node_boot || return 1
        echo "bench.sh: private node $NODE_NAME on port $NODE_PORT" >&2
        # The node is fresh: its default vhost is the run's (rabbitmqctl
        # without -n would reach the shared broker, so no vhost is made).
        # shellcheck disable=SC2086 # SIMULATE_FLAGS is a list of flags
        "$simulate" run --preset "$scenario" --out "bench/$scenario.json" \
            --amqp-url "$NODE_URL" --no-fresh-vhost ${SIMULATE_FLAGS:-} || status=$?
        node_destroy
        return "$status"
    fi
    # shellcheck disable=SC2086 # SIMULATE_FLAGS is a list of flags
    "$simulate" run --preset "$scenario" --out "bench/$scenario.json" ${SIMULATE_FLAGS:-}
}

machine_line() {
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores" \
        "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')," \
        "$(free -h | awk '/^Mem:/ {print $2}') memory), RabbitMQ $(rabbitmqctl -q version 2>/dev/null || echo unknown)," \
        "$(rustc --version | cut -d' ' -f1-2), release build; server as a child process on the same machine."
}

failed=()
ran_table=0
for scenario in "${scenarios[@]}"; do
    echo "== $scenario" >&2
    if [[ " ${table[*]} " == *" $scenario "* ]]; then
        ran_table=1
    fi
    if ! run "$scenario"; then
        failed+=("$scenario")
    fi
done

if ((ran_table)); then
    machine=bench/machine.md
    machine_line >"$machine"
    reports=()
    for scenario in "${table[@]}"; do
        [ -f "bench/$scenario.json" ] && reports+=("bench/$scenario.json")
    done
    "$simulate" render --markdown BENCHMARKS.md --machine "$machine" \
        --plot bench/ratios.svg "${reports[@]}"
    echo "bench.sh: wrote BENCHMARKS.md and bench/ratios.svg from ${reports[*]}" >&2
else
    echo "bench.sh: $(machine_line)" >&2
    echo "bench.sh: the table of BENCHMARKS.md is left as it is; ${scenarios[*]}: see bench/*.json" >&2
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "bench.sh: ${failed[*]}: the run failed or its check found losses or duplicates" >&2
    exit 1
fi
