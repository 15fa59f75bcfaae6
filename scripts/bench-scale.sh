#!/usr/bin/env bash
# The scale figures: 100,000 users and 1,000,000 subscriptions (10,000
# YouTubers, Zipf), set up through the real server, then 10 uploads; on a
# private RabbitMQ node, or with --cluster on three private nodes with quorum
# queues (scripts/cluster.sh). Reports set-up time, the broker's memory and
# CPU (every node, from /proc) and the server's; writes bench/scale-<where>.json.
#
#   sudo scripts/bench-scale.sh              # one node
#   sudo scripts/bench-scale.sh --cluster    # three nodes
#   sudo USERS=20000 SUBSCRIPTIONS=200000 scripts/bench-scale.sh   # smaller
#   sudo WATERMARK=0.7 scripts/bench-scale.sh   # the node may take 70 % of the memory
#
# Needs root, as the private nodes run with root's Erlang cookie. On a
# 2-core machine the set-up alone takes tens of minutes: it is a benchmark,
# run by hand, never by CI. Extra flags go in SIMULATE_FLAGS.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/broker.sh
source scripts/lib/broker.sh
# shellcheck source=scripts/lib/node.sh
source scripts/lib/node.sh
rust_toolchain_check || exit 1

where=node
if [[ ${1:-} == --cluster ]]; then
    where=cluster
    shift
fi
if (($# > 0)); then
    echo "bench-scale.sh: unknown argument '$1'; use --cluster or nothing" >&2
    exit 2
fi
USERS=${USERS:-100000}
SUBSCRIPTIONS=${SUBSCRIPTIONS:-1000000}
YOUTUBERS=${YOUTUBERS:-10000}
# Few: the figures are the set-up's and what holding it costs, not the
# uploads' (the other benchmarks measure those).
UPLOADS=${UPLOADS:-10}

cargo build --release --workspace --locked --quiet
simulate="${CARGO_TARGET_DIR:-target}/release/simulate"
mkdir -p bench
# Many queues and connections: the nodes inherit this shell's limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d /tmp/ytnotify-bench-scale.XXXXXX)
pids=()
if [[ $where == node ]]; then
    # shellcheck disable=SC2317 # run by the EXIT trap
    cleanup() {
        node_destroy
        rm -rf "$work"
    }
    trap cleanup EXIT
    node_create "$work/node" || exit 1
    # RabbitMQ's default, 0.4 of the memory, blocks publishers at about 9.6 GB
    # on a 24 GB machine, short of what 100,000 users take (BENCHMARKS.md).
    if [[ -n ${WATERMARK:-} ]]; then
        printf 'vm_memory_high_watermark.relative = %s\n' "$WATERMARK" >>"$NODE_DIR/rabbitmq.conf"
    fi
    node_boot || exit 1
    url=$NODE_URL
    pids=("$(node_pid)")
    target=(--amqp-url "$url" --no-fresh-vhost)
else
    export YT_CLUSTER_DIR="$work/cluster"
    # shellcheck disable=SC2317 # run by the EXIT trap
    cleanup() {
        scripts/cluster.sh down >/dev/null 2>&1 || true
        rm -rf "$work"
    }
    trap cleanup EXIT
    scripts/cluster.sh up >/dev/null
    for n in 1 2 3; do
        pids+=("$(tr -dc '0-9' <"$YT_CLUSTER_DIR/node$n/pid")")
    done
    target=(--cluster)
fi
trap 'echo "bench-scale.sh: interrupted" >&2; exit 130' INT TERM
broker_pids=()
for pid in "${pids[@]}"; do
    broker_pids+=(--broker-pid "$pid")
done

# The servers' logs outlive the run: a set-up that stalls is read there.
logs=${LOGS:-/tmp/ytnotify-bench-scale-logs}
echo "bench-scale.sh: the servers log to $logs" >&2
echo "bench-scale.sh: $USERS users, $SUBSCRIPTIONS subscriptions, $YOUTUBERS YouTubers on the $where (broker pids ${pids[*]}, at most $(ulimit -n) open files)" >&2
# shellcheck disable=SC2086 # SIMULATE_FLAGS is a list of flags
"$simulate" run --preset scale --name "scale-$where" \
    --users "$USERS" --subscriptions "$SUBSCRIPTIONS" --youtubers "$YOUTUBERS" --uploads "$UPLOADS" \
    --request-timeout 10m --no-ceiling --quiet "${target[@]}" "${broker_pids[@]}" \
    --server-logs "$logs" --out "bench/scale-$where.json" ${SIMULATE_FLAGS:-}
