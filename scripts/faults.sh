#!/usr/bin/env bash
# The long fault runs, outside CI: the fault tests repeated (each crashes,
# stalls or alarms a private RabbitMQ node, never the shared one), then the
# fuzzer for ten minutes.
#
#   scripts/faults.sh            # 5 rounds, then 600 s of fuzzing
#   scripts/faults.sh 20 60      # 20 rounds, then 60 s of fuzzing
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-5}
fuzz_seconds=${2:-600}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for round in $(seq 1 "$rounds"); do
    printf '\n==> fault tests, round %s of %s\n' "$round" "$rounds"
    status=0
    bash scripts/test.sh --test faults --test broker_restart --test cli -- --nocapture --test-threads=1 >"$log" 2>&1 || status=$?
    grep -E '^(broker crash|stalled broker|graceful shutdown)|^test result|FAILED|panicked' "$log" || true
    if [[ $status -ne 0 ]]; then
        printf 'round %s failed (exit %s); its output follows\n' "$round" "$status" >&2
        cat "$log" >&2
        exit 1
    fi
done

printf '\n==> fuzzing for %s s\n' "$fuzz_seconds"
exec bash scripts/fuzz.sh "$fuzz_seconds"
