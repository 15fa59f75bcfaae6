#!/usr/bin/env bash
# Runs the whole test suite against a local RabbitMQ, starting one if needed.
#
#   scripts/test.sh                     # every test
#   scripts/test.sh --test programs     # cargo test options and filters
#   scripts/test.sh -- --nocapture      # options for the test binaries
#
# The integration tests create a RabbitMQ vhost per test with rabbitmqctl, so
# rabbitmqctl must work here (as root or as the rabbitmq user). The broker is
# YT_TEST_AMQP_URL, else AMQP_URL, else amqp://guest:guest@127.0.0.1:5672/%2f.
#
# The store's tests, and the server's, run on SQLite and on PostgreSQL: a
# local PostgreSQL is installed and started if needed (scripts/lib/postgres.sh),
# or YT_TEST_POSTGRES_URL names one. With no arguments, the server's and the
# programs' tests then run a second time with the server on PostgreSQL
# (YT_TEST_DATABASE=postgres, which also selects it for a run with arguments)
# and its queues quorum queues (YT_QUEUE_TYPE=quorum, the same). The cluster
# tests (tests/cluster) start three private RabbitMQ nodes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/broker.sh
source scripts/lib/broker.sh
# shellcheck source=scripts/lib/browser.sh
source scripts/lib/browser.sh
# shellcheck source=scripts/lib/postgres.sh
source scripts/lib/postgres.sh

rust_toolchain_check || exit 1
ensure_broker "${YT_TEST_AMQP_URL:-${AMQP_URL:-$BROKER_DEFAULT_URL}}" || exit 1
# The secure-mode tests add accounts through the management API.
ensure_management "${YT_TEST_AMQP_URL:-${AMQP_URL:-$BROKER_DEFAULT_URL}}" || exit 1
broker_preflight "${YT_TEST_AMQP_URL:-${AMQP_URL:-$BROKER_DEFAULT_URL}}" || exit 1
# The gateway's page is tested in a real headless Chromium.
ensure_browser || exit 1
# The store runs on PostgreSQL as well as SQLite.
ensure_postgres || exit 1
postgres_drop_stale ytnotify_test_

if ! command -v rabbitmqctl >/dev/null 2>&1; then
    if ctl=$(broker_tool rabbitmqctl); then
        # shellcheck disable=SC2016 # $PATH is for the reader to type
        printf '[test] rabbitmqctl is in %s, which is not on PATH; the tests run it: export PATH="$PATH:%s"\n' \
            "${ctl%/*}" "${ctl%/*}" >&2
    else
        printf '[test] the tests need rabbitmqctl (from rabbitmq-server) on the machine that runs the broker\n' >&2
    fi
    exit 1
fi
if ! output=$(timeout 90 rabbitmqctl -q list_vhosts 2>&1); then
    printf '[test] rabbitmqctl list_vhosts failed: %s\n' "$(printf '%s' "$output" | tr -s '\n' ' ')" >&2
    printf "[test] the tests create a vhost each with rabbitmqctl: run them on the broker's machine, as root or as the rabbitmq user\n" >&2
    exit 1
fi

# Arguments before a "--" go to cargo test, the ones after to the test binaries.
cargo_args=()
test_args=()
while (($# > 0)); do
    if [[ $1 == -- ]]; then
        shift
        test_args=("$@")
        break
    fi
    cargo_args+=("$1")
    shift
done
threads=(--test-threads=4)
for arg in "${test_args[@]}"; do
    if [[ $arg == --test-threads* ]]; then
        threads=()
    fi
done

if [[ -n ${CI+set} ]]; then
    export CI
fi
# Every package of the workspace unless one is named; the programs are built
# first, as the simulator's tests run the server beside them.
workspace=(--workspace)
for arg in "${cargo_args[@]}"; do
    if [[ $arg == -p || $arg == --package* || $arg == -p* ]]; then
        workspace=()
    fi
done
cargo build --workspace --bins --all-features --locked --quiet
if ((${#cargo_args[@]} > 0 || ${#test_args[@]} > 0)) || [[ -n ${YT_TEST_DATABASE:-} ]]; then
    exec cargo test "${workspace[@]}" --all-features --locked "${cargo_args[@]}" -- "${threads[@]}" "${test_args[@]}"
fi
cargo test --workspace --all-features --locked -- "${threads[@]}"
printf '\n[test] the server and the programs again, with the server on PostgreSQL and quorum queues\n' >&2
YT_TEST_DATABASE=postgres YT_QUEUE_TYPE=quorum exec cargo test -p ytnotify --all-features --locked \
    --test library --test programs -- "${threads[@]}"
