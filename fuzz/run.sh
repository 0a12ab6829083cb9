#!/usr/bin/env bash
# Runs every fuzz target for a fixed number of executions, one after the other, and prints the
# executions and findings of each and the total. Not part of CI: it needs the nightly toolchain
# and cargo-fuzz (installed here when missing), and takes a while.
#
#   fuzz/run.sh                    # every target, default executions
#   RUNS=100000 fuzz/run.sh patch  # chosen targets, N executions each
#
# Settings (environment):
#   RUNS            executions per target (default: per target, see DEFAULT_RUNS below)
#   RUNS_<target>   executions for one target, e.g. RUNS_request_body=50000
#   TIMEOUT         seconds one input may take before it counts as a timeout (default 10)
#   RSS_LIMIT_MB    memory limit of the fuzzing process (default 2048)
#   GROW=1          add the inputs that reached new coverage to fuzz/corpus (commit them)
#
# New inputs go to fuzz/target/corpus/<target>; the committed corpus is only read unless
# GROW=1. A crash or timeout leaves its input in fuzz/artifacts/<target>/ and makes the script
# exit non-zero; reproduce it with `cargo +nightly fuzz run -a <target> <file>`.
set -euo pipefail

cd "$(dirname "$0")"

# Cheap parsers run 1.6M times each; decoding, validating and patching whole reports cost about
# a millisecond per input, so fewer.
declare -A DEFAULT_RUNS=(
    [label_selector]=1600000 [field_selector]=1600000 [continue_token]=1600000
    [list_options]=1600000 [accept_header]=1600000 [request_path]=1600000
    [request_body]=200000 [patch]=500000
)
# Selectors, tokens, headers, query strings and paths are short in practice; longer inputs only
# slow the search down. Bodies and patches keep libFuzzer's default (the largest seed).
declare -A MAX_LEN=(
    [label_selector]=1024 [field_selector]=1024 [continue_token]=1024
    [list_options]=2048 [accept_header]=1024 [request_path]=2048
)
ALL_TARGETS=(label_selector field_selector continue_token list_options accept_header request_path request_body patch)
TIMEOUT="${TIMEOUT:-10}"
RSS_LIMIT_MB="${RSS_LIMIT_MB:-2048}"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzzing needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=("${ALL_TARGETS[@]}")
fi

# -a: debug assertions and overflow checks, so an arithmetic overflow is a finding too.
cargo +nightly fuzz build -a

total_runs=0
total_findings=0
for target in "${targets[@]}"; do
    override="RUNS_${target}"
    runs="${!override:-${RUNS:-${DEFAULT_RUNS[$target]:-1000000}}}"
    work="target/corpus/${target}"
    mkdir -p "$work" "artifacts/${target}"
    before=$(find "artifacts/${target}" -type f | wc -l)
    log="target/fuzz-${target}.log"
    start=$(date +%s)
    status=0
    # One job at a time: the machine is shared.
    limits=()
    if [ -n "${MAX_LEN[$target]:-}" ]; then
        limits=(-max_len="${MAX_LEN[$target]}")
    fi
    cargo +nightly fuzz run -a "$target" "$work" "corpus/${target}" -- \
        "${limits[@]}" -runs="$runs" -timeout="$TIMEOUT" -rss_limit_mb="$RSS_LIMIT_MB" -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    seconds=$(($(date +%s) - start))
    done_runs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || true)
    if [ -z "$done_runs" ]; then
        # Stopped early (a finding): the last status line has the count.
        done_runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
    fi
    done_runs="${done_runs:-0}"
    findings=$(($(find "artifacts/${target}" -type f | wc -l) - before))
    if [ "$status" -ne 0 ] && [ "$findings" -eq 0 ]; then
        findings=1
    fi
    crashes=$(grep -cE 'ERROR: libFuzzer: deadly signal|ERROR: AddressSanitizer' "$log" || true)
    timeouts=$(grep -cE 'ERROR: libFuzzer: timeout' "$log" || true)
    ooms=$(grep -cE 'ERROR: libFuzzer: out-of-memory' "$log" || true)
    printf '%-16s %12s executions in %5ss: %s crashes, %s timeouts, %s out-of-memory\n' \
        "$target" "$done_runs" "$seconds" "$crashes" "$timeouts" "$ooms"
    total_runs=$((total_runs + done_runs))
    total_findings=$((total_findings + findings))
    if [ "${GROW:-0}" = 1 ]; then
        # Merge: adds only the inputs that reach new coverage, and keeps the seeds as they are.
        cargo +nightly fuzz run -a "$target" "corpus/${target}" "$work" -- "${limits[@]}" -merge=1 \
            >>"$log" 2>&1
    fi
done
echo "total            ${total_runs} executions, ${total_findings} findings (crashes, timeouts, out-of-memory)"
[ "$total_findings" -eq 0 ]
