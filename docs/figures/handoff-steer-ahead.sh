#!/usr/bin/env bash
# Re-measures README "Live handoff"'s steer-ahead and real-time figures and redraws their
# chart: 20 drained user->user handoffs in a 1 MB download, as separate dsnode/dsha
# processes, in four variants run in turn, run by run (same machine, same minutes: the ratios
# are not skewed by drift), RUNS each (default 6):
#   base          the acceptor waits for the home agent's answer (the default)
#   steer-ahead   dsnode --steer-ahead
#   rt            --steer-ahead, nodes and home agent under SCHED_FIFO 10 (--sched-fifo)
#   rt-idle       as rt, and /dev/cpu_dma_latency held at 0 (--idle-poll)
#   rt-idle-spin  as rt-idle, and the nodes busy-poll across the offer's round trip
#                 (--busy-poll=exchange)
# Needs root and a release build:
#   cargo build --release -p ds-perf -p ds-apps
set -euo pipefail
cd "$(dirname "$0")"
dsperf=${DSPERF:-../../target/release/dsperf}
runs=${RUNS:-6}
variants=(base steer-ahead rt rt-idle rt-idle-spin)
declare -A flags=(
    [base]=""
    [steer-ahead]="--steer-ahead"
    [rt]="--steer-ahead --sched-fifo 10"
    [rt-idle]="--steer-ahead --sched-fifo 10 --idle-poll"
    [rt-idle-spin]="--steer-ahead --sched-fifo 10 --idle-poll --busy-poll=exchange"
)
for v in "${variants[@]}"; do
    : >"handoff-steer-ahead-$v.jsonl"
done
for i in $(seq "$runs"); do
    echo "run $i of $runs" >&2
    for v in "${variants[@]}"; do
        # shellcheck disable=SC2086 # the flags are words
        "$dsperf" handoff --processes --count 20 --path "user->user" ${flags[$v]} \
            >>"handoff-steer-ahead-$v.jsonl"
    done
done
"$dsperf" handoff-plot \
    "waits for the home agent=handoff-steer-ahead-base.jsonl" \
    "steers ahead=handoff-steer-ahead-steer-ahead.jsonl" \
    "steers ahead, SCHED_FIFO=handoff-steer-ahead-rt.jsonl" \
    "steers ahead, SCHED_FIFO, idle CPUs poll=handoff-steer-ahead-rt-idle.jsonl" \
    "as above, busy-poll across the offer's round trip=handoff-steer-ahead-rt-idle-spin.jsonl" \
    --title "dsperf handoff: 20 drained user->user handoffs x $runs runs per variant, in turn (medians)" \
    -o dsperf-handoff-steer-ahead.svg
