#!/usr/bin/env bash
# The long fault runs, outside CI: every test that breaks something on purpose,
# repeated (the private-node ones crash, stall or alarm a RabbitMQ node of
# their own, never the shared one; the others cut connections, delete queues
# and play hostile clients on a vhost of their own), then the fuzzer.
#
#   scripts/faults.sh            # 20 rounds, then 600 s of fuzzing
#   scripts/faults.sh 5 0        # 5 rounds, no fuzzing
#
# It stops at the first failing round and prints its whole output; otherwise
# it prints how many rounds passed and how long the reconnections took.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-20}
fuzz_seconds=${2:-600}

log=$(mktemp)
all=$(mktemp)
trap 'rm -f "$log" "$all"' EXIT
passed=0
started=$SECONDS
for round in $(seq 1 "$rounds"); do
    printf '\n==> fault tests, round %s of %s\n' "$round" "$rounds"
    status=0
    {
        bash scripts/test.sh --test library -- --nocapture --test-threads=1 faults:: restart:: &&
            bash scripts/test.sh -p ytnotify-simulate --test faults -- --nocapture &&
            bash scripts/test.sh -p ytnotify-gateway --test protocol -- --nocapture &&
            bash scripts/test.sh --test library --test programs -- --nocapture server:: cli::
    } >"$log" 2>&1 || status=$?
    cat "$log" >>"$all"
    grep -E '^(broker crash|stalled broker|graceful shutdown|broker down|PostgreSQL down|the killed server|node 0 served)|^test result|^test .* FAILED$|panicked at' "$log" || true
    if [[ $status -ne 0 ]]; then
        printf 'round %s failed (exit %s) after %s of %s rounds passed; its output follows\n' \
            "$round" "$status" "$passed" "$rounds" >&2
        cat "$log" >&2
        exit 1
    fi
    passed=$((passed + 1))
done
printf '\n==> %s of %s rounds passed in %s s\n' "$passed" "$rounds" $((SECONDS - started))

# "connected to RabbitMQ again after 3.4 s": one line per connection that
# came back, across every round.
sed -n 's/.*connected to RabbitMQ again after \([0-9.]*\) s.*/\1/p' "$all" | sort -n >"$log"
if [[ -s $log ]]; then
    awk '{ v[NR] = $1 } END {
        printf "reconnections: %d; time from loss to connected again: p50 %.1f s, p90 %.1f s, max %.1f s\n",
            NR, v[int((NR + 1) / 2)], v[int((NR * 9 + 9) / 10)], v[NR]
    }' "$log"
fi

if ((fuzz_seconds > 0)); then
    printf '\n==> fuzzing for %s s\n' "$fuzz_seconds"
    exec bash scripts/fuzz.sh "$fuzz_seconds"
fi
