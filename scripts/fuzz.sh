#!/usr/bin/env bash
# Builds and runs the coverage-guided fuzzers (cargo-fuzz / libFuzzer) of fuzz/.
#
#   scripts/fuzz.sh [target|all] [seconds per target]     (default: all, 300)
#
# Targets: the names in fuzz/fuzz_targets/ (extract_text, extract_html, extract_json,
# extract_pdf, extract_gzip, bedrock_event_stream, sse, config). Each run starts from the
# committed corpus fuzz/corpus/<target>/ (read only) and keeps what it discovers in
# $FUZZ_WORK/corpus/<target>/; a crash or hang is written to fuzz/artifacts/<target>/ and
# makes the script fail. Minimize one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz tmin --sanitizer none -a <target> <artifact>
# and commit it under fuzz/regressions/<target>/ (the unit tests replay it from then on).
#
# The build instruments every dependency: the first one takes 30-60 minutes of CPU.
# Environment:
#   CARGO_TARGET_DIR  where the instrumented build goes (default: fuzz/target)
#   FUZZ_WORK         scratch for discovered inputs and logs (default: fuzz/target/work)
#   FUZZ_SANITIZER    none (default: fast; panics, hangs and memory blow-ups are still
#                     caught) or address (for the unsafe code in dependencies)
#   FUZZ_JOBS         targets run side by side (default 1)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

wanted=${1:-all}
seconds=${2:-300}
sanitizer=${FUZZ_SANITIZER:-none}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/fuzz/target}
work=${FUZZ_WORK:-$CARGO_TARGET_DIR/work}
jobs=${FUZZ_JOBS:-1}

# cargo-fuzz passes nightly-only flags (-Z sanitizer, -C passes=sancov-module); a stable
# toolchain accepts them with RUSTC_BOOTSTRAP.
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [[ $wanted == all ]]; then
    mapfile -t targets < <(cargo fuzz list)
else
    targets=("$wanted")
fi

flags=(--sanitizer "$sanitizer" --debug-assertions)
if [[ $wanted == all ]]; then
    cargo fuzz build "${flags[@]}"
else
    cargo fuzz build "${flags[@]}" "$wanted"
fi

run_one() {
    local target=$1
    mkdir -p "$work/corpus/$target" "$work/logs"
    local log="$work/logs/$target.log"
    # The first folder receives new inputs; the committed corpus is only read.
    cargo fuzz run "${flags[@]}" "$target" "$work/corpus/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1
}

failed=()
pids=()
running=0
for target in "${targets[@]}"; do
    echo "fuzzing $target for ${seconds}s (log: $work/logs/$target.log)"
    run_one "$target" &
    pids+=("$!:$target")
    running=$((running + 1))
    if ((running >= jobs)); then
        wait -n || true
        running=$((running - 1))
    fi
done
for entry in "${pids[@]}"; do
    wait "${entry%%:*}" || true
done

printf '\n%-22s %14s %10s  %s\n' target executions exec/s result
for target in "${targets[@]}"; do
    log="$work/logs/$target.log"
    runs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+$' || echo "?")
    speed=$(grep -oE 'stat::average_exec_per_sec: [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+$' || echo "?")
    if grep -qE '^==[0-9]+== ERROR|Test unit written to|deadly signal|timeout after' "$log"; then
        result="FOUND: $(grep -oE 'Test unit written to .*' "$log" | tail -n 1)"
        failed+=("$target")
    else
        result="nothing found"
    fi
    printf '%-22s %14s %10s  %s\n' "$target" "$runs" "$speed" "$result"
done
if ((${#failed[@]} > 0)); then
    echo "findings in: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
