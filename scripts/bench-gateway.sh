#!/usr/bin/env bash
# The browser benchmark: 1,000 Server-Sent Events clients and 1,000
# WebSocket clients on two `gateway` processes, beside the simulator's AMQP
# receivers in the same run, against a private RabbitMQ node whose
# open-file limit is raised; writes bench/gateway.json and prints the report.
#
#   sudo scripts/bench-gateway.sh                          # the benchmark
#   sudo SIMULATE_FLAGS="--ws-acks http" OUT=bench/gateway-http.json scripts/bench-gateway.sh
#
# Why a private node: every browser stream is a stream consumer on the
# broker, which costs it a file descriptor (and each user's history two
# more); 2,000 clients of 200 users need about 2,500, and the shared broker
# here allows 927. The node is started with `ulimit -n 65536` (or the hard
# limit, if lower and at least 8,192) and destroyed
# on exit, whatever happens. The gateways and the simulator, started from
# this shell, inherit the same limit (each holds a socket per client).
#
# The scenario: 200 users each following one of 4 YouTubers, 10 browser
# clients per user (user i gets clients i, i + 200, ...; the first 1,000 read
# SSE, the others a WebSocket), 300 uploads at 10 per second, so that each
# upload reaches about 500 browser clients and 50 inboxes. Needs root (the
# private node runs with root's Erlang cookie) and rabbitmq-server installed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/broker.sh
source scripts/lib/broker.sh
# shellcheck source=scripts/lib/node.sh
source scripts/lib/node.sh

rust_toolchain_check || exit 1
# 65,536 where the hard limit allows it; else the hard limit (a container's
# root may not raise it), if it leaves room for the 2,000 clients' sockets.
if ! ulimit -n 65536 2>/dev/null; then
    hard=$(ulimit -Hn)
    if [[ $hard == unlimited ]] || ((hard >= 8192)); then
        ulimit -n "$hard"
        echo "bench-gateway.sh: the open-file limit is $hard here (the hard limit), not 65536" >&2
    else
        echo "bench-gateway.sh: cannot raise the open-file limit to 65536 (hard limit $hard); run it as root with a hard limit of at least 8192" >&2
        exit 1
    fi
fi

cargo build --release --workspace --locked --quiet

work=$(mktemp -d /tmp/ytnotify-bench-gateway.XXXXXX)
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    node_destroy
    rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "bench-gateway.sh: interrupted" >&2; exit 130' INT TERM

node_create "$work/node" || exit 1
node_boot || exit 1
echo "bench-gateway.sh: private node $NODE_NAME on port $NODE_PORT;" \
    "$(node_ctl status 2>/dev/null | grep -m1 'Total: .*limit' || echo 'file descriptors unknown')" >&2

out=${OUT:-bench/gateway.json}
mkdir -p "$(dirname "$out")"
# The node is fresh: its own vhost is the run's (rabbitmqctl without -n
# would reach the shared broker, so no fresh vhost is made).
# shellcheck disable=SC2086 # SIMULATE_FLAGS is a list of flags
"${CARGO_TARGET_DIR:-target}/release/simulate" run \
    --amqp-url "$NODE_URL" --no-fresh-vhost \
    --name browsers \
    --users 200 --youtubers 4 --subscriptions 200 \
    --uploads 300 --upload-rate 10 --upload-window 8 \
    --sse-clients 1000 --ws-clients 1000 --gateways 2 \
    --drain-timeout 120s --request-timeout 120s \
    --out "$out" ${SIMULATE_FLAGS:-} || status=$?
# The report is written even when the check fails; the exit code says so.
echo "bench-gateway.sh: wrote $out" >&2
exit "${status:-0}"
