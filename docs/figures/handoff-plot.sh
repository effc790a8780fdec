#!/usr/bin/env bash
# Regenerates docs/figures/dsperf-handoff.svg from the JSON lines next to it (produced by
# `dsperf handoff`, 10 runs each unless noted; see README "Live handoff").
set -euo pipefail
cd "$(dirname "$0")"
dsperf=${DSPERF:-../../target/release/dsperf}
"$dsperf" handoff-plot \
    "transparent user->user=handoff-t1-acked.jsonl" \
    "transparent kernel->user=handoff-kernel_user.jsonl" \
    "transparent user->kernel=handoff-user_kernel.jsonl" \
    "transparent kernel->kernel=handoff-kernel_kernel.jsonl" \
    "route-optimised user->user=handoff-ro.jsonl" \
    "user->user, 200 in 32 MiB=handoff-acked.jsonl" \
    --title "dsperf handoff: drained handoffs of a curl download, phases of seed Table 1 (medians)" \
    -o dsperf-handoff.svg
