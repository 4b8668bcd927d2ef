#!/usr/bin/env bash
# Runs the proptest fuzz targets of crates/capstan-api/tests/fuzz (request decoding, patches,
# apply, selectors, quantities) for a time budget split evenly over the targets, then prints a
# Markdown table: target, cases run, seconds, panics found, result.
#
# Usage: scripts/fuzz.sh [total-seconds] [target...]     (default: 600 s, every target)
# Env:   CARGO_TARGET_DIR as usual; CAPSTAN_FUZZ_SEED to replay; FUZZ_RELEASE=1 for --release;
#        FUZZ_LOG_DIR for the per-target logs (default: a new temporary directory).
# Exit status is non-zero when any target found a failure or crashed.
set -euo pipefail

total=${1:-600}
shift || true
cd "$(dirname "$0")/.."

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(decode_json decode_yaml decode_protobuf validate_objects json_patch merge_patch
        strategic_merge_patch server_side_apply label_selector field_selector quantity)
fi
per=$(( total / ${#targets[@]} ))
[ "$per" -ge 1 ] || per=1

profile=()
[ "${FUZZ_RELEASE:-0}" = 1 ] && profile=(--release)
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
cargo test "${profile[@]}" -p capstan-api --test fuzz --no-run 2>&1 | tee "$build_log" >&2
bin=$(grep -o '(\S*/fuzz-[0-9a-f]*)' "$build_log" | tail -n1 | tr -d '()')
if [ ! -x "$bin" ]; then
    echo "fuzz.sh: could not find the fuzz test binary" >&2
    exit 1
fi

logs=${FUZZ_LOG_DIR:-$(mktemp -d /tmp/capstan-fuzz.XXXXXX)}
mkdir -p "$logs"
# Run a copy, so a rebuild during a long run does not replace the binary under it.
cp "$bin" "$logs/fuzz-bin"
bin="$logs/fuzz-bin"
trap 'rm -f "$build_log" "$bin"' EXIT
echo "fuzz.sh: ${#targets[@]} targets x ${per}s, logs in $logs" >&2

rows=()
failed=0
for t in "${targets[@]}"; do
    log="$logs/$t.log"
    start=$(date +%s)
    status=0
    CAPSTAN_FUZZ_SECONDS=$per RUST_BACKTRACE=0 \
        "$bin" --exact "$t" --nocapture --test-threads=1 >"$log" 2>&1 || status=$?
    line=$(grep -o -m1 "FUZZ target=$t .*" "$log" || true)
    if [ -n "$line" ]; then
        cases=$(sed -E 's/.* cases=([0-9]+).*/\1/' <<<"$line")
        secs=$(sed -E 's/.* seconds=([0-9.]+).*/\1/' <<<"$line")
        panics=$(sed -E 's/.* panics=([0-9]+).*/\1/' <<<"$line")
        result=$(sed -E 's/.* result=([A-Za-z]+).*/\1/' <<<"$line")
    else
        # No summary line: the process died (stack overflow, abort, signal).
        cases="?"; secs=$(( $(date +%s) - start )); panics="?"; result="CRASH(exit $status)"
    fi
    [ "$result" = ok ] && [ "$status" -eq 0 ] || failed=1
    rows+=("| $t | $cases | $secs | $panics | $result |")
    echo "fuzz.sh: $t: $result ($cases cases)" >&2
done

echo "| target | cases | seconds | panics | result |"
echo "|---|---:|---:|---:|---|"
printf '%s\n' "${rows[@]}"
exit $failed
