#!/usr/bin/env bash
# Fuzzes the wire format: runs the libFuzzer target `decode` (fuzz/) for a
# while and says what it found.
#
#     scripts/fuzz.sh            # ten minutes
#     scripts/fuzz.sh 60         # one minute
#
# Needs cargo-fuzz and, best, a nightly toolchain (without nightly, the
# stable one is used with RUSTC_BOOTSTRAP=1). It installs nothing: when
# cargo-fuzz is missing it says what to run.
# The seeds in fuzz/corpus/decode/ are read, never written: what the fuzzer
# learns goes to fuzz/work/corpus/decode/ (kept between runs, not committed),
# crashes to fuzz/artifacts/decode/.
#
# Exit status: 0 when nothing was found, 1 when a crash (or a timeout or
# out-of-memory input) was found, 2 on a usage or build error.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=decode
seconds=${1:-600}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]] || (($# > 1)); then
    echo "usage: scripts/fuzz.sh [SECONDS]   (default 600)" >&2
    exit 2
fi

seeds=fuzz/corpus/$target
corpus=fuzz/work/corpus/$target
artifacts=fuzz/artifacts/$target
log=fuzz/work/$target.log
mkdir -p "$corpus" "$artifacts"

say() {
    printf '==> %s\n' "$*"
}

# -- tools ------------------------------------------------------------------

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is missing: install it with  cargo install cargo-fuzz --locked  (and, best, a nightly toolchain:  rustup toolchain install nightly --profile minimal)" >&2
    exit 2
fi

# cargo-fuzz builds with -Zsanitizer=address, a nightly flag.
cargo_fuzz=(cargo fuzz)
if cargo +nightly --version >/dev/null 2>&1; then
    cargo_fuzz=(cargo +nightly fuzz)
    toolchain="nightly ($(rustc +nightly --version))"
else
    say "no nightly toolchain (rustup toolchain install nightly --profile minimal): using the stable one with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    toolchain="stable with RUSTC_BOOTSTRAP=1 ($(rustc --version))"
fi

# -- build ------------------------------------------------------------------

say "building fuzz target $target with $toolchain"
if ! "${cargo_fuzz[@]}" build "$target"; then
    echo "fuzz.sh: the fuzz target did not build; see the errors above" >&2
    exit 2
fi

# -- run --------------------------------------------------------------------

before=$(find "$artifacts" -maxdepth 1 -type f | wc -l)
started=$(date +%s)
say "fuzzing $target for ${seconds}s; log in $log"
# -max_total_time stops libFuzzer after that many seconds; -timeout makes a
# single input that takes over 10 s a finding; -rss_limit_mb one that takes
# over 2 GiB. The dictionary holds the protocol's JSON tokens. The first
# corpus directory receives new inputs; the seeds are only read.
set +e
"${cargo_fuzz[@]}" run "$target" "$corpus" "$seeds" -- \
    -max_total_time="$seconds" \
    -timeout=10 \
    -rss_limit_mb=2048 \
    -max_len=4096 \
    -dict=fuzz/$target.dict \
    -print_final_stats=1 \
    2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
elapsed=$(($(date +%s) - started))

# -- summary ----------------------------------------------------------------

stat() {
    # A figure from libFuzzer's final statistics ("stat::NAME: VALUE").
    sed -n "s/^stat::$1:[[:space:]]*//p" "$log" | tail -n 1
}
runs=$(stat number_of_executed_units)
rate=$(stat average_exec_per_sec)
if [[ -z $runs ]]; then
    # Killed before printing its statistics: take the last status line.
    runs=$(sed -n 's/^#\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
    rate=$(sed -n 's/.*exec\/s: \([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
fi
corpus_size=$(find "$corpus" -maxdepth 1 -type f | wc -l)
mapfile -t found < <(find "$artifacts" -maxdepth 1 -type f \
    \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) \
    -newermt "@$started" | sort)

echo
echo "==================== fuzz summary: $target ===================="
echo "duration:        ${elapsed}s (asked for ${seconds}s)"
echo "runs executed:   ${runs:-unknown}"
echo "exec/s:          ${rate:-unknown}"
echo "corpus:          $corpus_size inputs in $corpus (seeds: $seeds)"
echo "crashes found:   ${#found[@]}"
for file in "${found[@]}"; do
    echo "  $file"
done
if ((${#found[@]} == 0 && status != 0)); then
    echo "libFuzzer exited with status $status without leaving a crash file; see $log"
fi
if ((before > 0)); then
    echo "($before files from earlier runs are also in $artifacts)"
fi

if ((${#found[@]} > 0)); then
    first=${found[0]}
    cat <<EOF

To reproduce a crash (it runs the target once on that input):

    ${cargo_fuzz[*]} run $target $first

To shrink it first:

    ${cargo_fuzz[*]} tmin $target $first

To keep it as a regression test, add this to tests/properties.rs (the
bytes are those of $first), then fix the library until it passes:

    #[test]
    fn regression_fuzz_$(basename "$first" | tr -c 'a-zA-Z0-9\n' '_' | cut -c1-24)() {
        decodes_cleanly(&[$(od -An -v -tu1 "$first" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//; s/ /, /g')]);
    }
EOF
    exit 1
fi
if ((status != 0)); then
    exit 1
fi
echo "no crash: every decoder survived every input."
