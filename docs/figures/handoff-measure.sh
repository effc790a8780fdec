#!/usr/bin/env bash
# Re-measures the JSON lines behind README "Live handoff" and redraws the chart: every path and
# mode as separate dsnode/dsha processes (`dsperf handoff --processes`), 20 handoffs in a 1 MB
# download (200 in 32 MiB for the long rows), 3 runs each. Needs root and a release build:
#   cargo build --release -p ds-perf -p ds-apps
set -euo pipefail
cd "$(dirname "$0")"
dsperf=${DSPERF:-../../target/release/dsperf}
runs=${RUNS:-3}
measure() {
    local out=$1
    shift
    : >"$out"
    for _ in $(seq "$runs"); do
        "$dsperf" handoff --processes "$@" >>"$out"
    done
}
measure handoff-t1-acked.jsonl --count 20 --path "user->user"
measure handoff-t1-immediate.jsonl --count 20 --drain immediate
measure handoff-kernel_user.jsonl --count 20 --path "kernel->user"
measure handoff-user_kernel.jsonl --count 20 --path "user->kernel"
measure handoff-kernel_kernel.jsonl --count 20 --path "kernel->kernel"
measure handoff-ro.jsonl --count 20 --mode ro
measure handoff-acked.jsonl --count 200 --size 32MiB
measure handoff-immediate.jsonl --count 200 --size 32MiB --drain immediate
bash handoff-plot.sh
