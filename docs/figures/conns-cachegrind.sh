#!/usr/bin/env bash
# Counts what `dsperf conns` times, with callgrind instead of a clock: instructions and cache
# lines read from beyond a 2 MiB cache (this VM's L2 per core; callgrind's "LL") per
# request/response exchange, on the server's side only (callgrind collects inside
# `ds_perf::conns::serve`, the timed part). Counts, not seconds: the same binary gives the
# same figures whatever else the machine does, so two builds compare where this VM's timings
# spread by 10-50 % from run to run. No root needed.
#
#   docs/figures/conns-cachegrind.sh [DSPERF...]     (default: target/release/dsperf)
#
# Each binary is run at COUNTS connections (default "1 10000"; at 10,000 the server's state
# is already ~5x the simulated cache, and 100,000 takes minutes under callgrind) with
# EXCHANGES exchanges (default 20000; at least 10,000). Prints a table; JSON lines go to
# docs/figures/dsperf-conns-cachegrind.jsonl when SAVE=1 (labelled with BUILD, if set).
#
# BATCH (default 1) exchanges go to the server per pass (`dsperf conns --batch`); 16 is what
# the README's table times, and what lets the look-ahead work (from 1,024 connections).
#
# The stacks' clock is paced, PACE_NS nanoseconds an exchange (default 1000, about full speed;
# `dsperf conns --pace-ns`): under callgrind's ~50x slowdown the wall clock would turn the
# timer wheel's 1 ms buckets over for nearly every exchange, counting lines that at full speed
# a thousand exchanges share. PACE_NS= (empty) follows the wall clock, as the counts before
# 2026-12-04 did and as builds without --pace-ns need.
set -euo pipefail
bins=()
for b in "$@"; do bins+=("$(realpath "$b")"); done
cd "$(dirname "$0")"
[ ${#bins[@]} -eq 0 ] && bins=("$(realpath ../../target/release/dsperf)")
counts=${COUNTS:-"1 10000"}
exchanges=${EXCHANGES:-20000}
batch=${BATCH:-1}
pace=()
[ -n "${PACE_NS-1000}" ] && pace=(--pace-ns "${PACE_NS-1000}")
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
[ "$exchanges" -ge 10000 ] || { echo "EXCHANGES must be at least 10000 (the warm-up)" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "| binary | connections | instructions / exchange | L1d misses / exchange | lines from beyond 2 MiB / exchange |"
echo "|---|---|---|---|---|"
# Totals "Ir D1mr D1mw DLmr DLmw" of one run of $1 at $2 connections and $3 exchanges, read
# by event name from callgrind's own "events:" and "totals:" lines.
totals() {
    rm -f "$out/cg"
    if ! valgrind --tool=callgrind --callgrind-out-file="$out/cg" --cache-sim=yes \
        --LL=2097152,16,64 --toggle-collect='ds_perf::conns::serve' \
        "$1" conns --counts "$2" --repeats 1 --exchanges "$3" --batch "$batch" "${pace[@]}" >/dev/null 2>"$out/log"; then
        cat "$out/log" >&2
        echo "callgrind run of $1 failed" >&2
        return 1
    fi
    python3 - "$out/cg" <<'EOF'
import sys
names = totals = None
for line in open(sys.argv[1]):
    if line.startswith("events:"):
        names = line.split()[1:]
    elif line.startswith("totals:"):
        totals = [int(x) for x in line.split()[1:]]
if not names or not totals:
    sys.exit("no totals in callgrind's output")
t = dict(zip(names, totals + [0] * (len(names) - len(totals))))
print(*(t.get(k, 0) for k in ("Ir", "D1mr", "D1mw", "DLmr", "DLmw")))
EOF
}
for b in "${bins[@]}"; do
    for n in $counts; do
        echo "callgrind: $b at $n connections" >&2
        # Two runs, EXCHANGES and twice as many: their difference is EXCHANGES measured
        # exchanges alone, without the warm-up passes (every connection once, whose first
        # exchange allocates its buffers, then 10,000 at random).
        one=$(totals "$b" "$n" "$exchanges") || exit 1
        two=$(totals "$b" "$n" $((2 * exchanges))) || exit 1
        row=$(DATE="$(date -u +%F)" BATCH="$batch" B="$b" N="$n" E="$exchanges" ONE="$one" TWO="$two" python3 -c '
import json, os
e = int(os.environ["E"])
d = [int(b) - int(a) for a, b in zip(os.environ["ONE"].split(), os.environ["TWO"].split())]
print(json.dumps({"binary": os.environ["B"], "connections": int(os.environ["N"]),
    "exchanges": e, "batch": int(os.environ["BATCH"]), "instructions_per_exchange": round(d[0] / e, 1),
    "l1d_misses_per_exchange": round((d[1] + d[2]) / e, 2),
    "ll_misses_per_exchange": round((d[3] + d[4]) / e, 2), "ll_bytes": 2097152,
    "build": os.environ.get("BUILD", ""), "date": os.environ["DATE"]}))')
        [ "${SAVE:-0}" = 1 ] && echo "$row" >>dsperf-conns-cachegrind.jsonl
        ROW="$row" python3 -c '
import json, os
r = json.loads(os.environ["ROW"])
cells = [r["binary"], r["connections"], "%.0f" % r["instructions_per_exchange"],
         "%.1f" % r["l1d_misses_per_exchange"], "%.1f" % r["ll_misses_per_exchange"]]
print("| " + " | ".join(str(c) for c in cells) + " |")'
    done
done
