#!/usr/bin/env bash
# Live-handoff demo: a client downloads one object over HTTP/1.1 from the DS address; node 1
# serves the first 500 000 bytes, then hands the live TCP connection to node 2, which serves
# the rest. The client (curl on the Linux kernel's TCP) never notices. Separate processes:
#
#   [cli]  curl, kernel TCP   c0 fd00:d5:1::c ──┐
#   [ha]   dsha xdp           h0 fd00:d5:1::a ──┤  br0 in [lan]
#   [n1]   dsnode (AF_XDP)    n0 care-of fd00:d5:1::1 (+ DS address), control fd00:d5:1::11 ──┤
#   [n2]   dsnode (AF_XDP)    n0 care-of fd00:d5:1::2 (+ DS address), control fd00:d5:1::12 ──┘
#
# The client routes the DS address fd00:d5:80::80 via the home agent, whose XDP program
# tunnels each flow to the care-of address of the node serving it; node 2 asks the home agent
# to move the flow when it takes the connection (transparent mode). Replies go straight from
# the serving node to the client.
#
# With --failover, the nodes also run the membership protocol (dsnode --role backup; the
# home agent takes the DS address's binding from the contact's registration, dsha --members):
# after the handoff, node 1 (the contact) is killed with SIGKILL and the demo measures how long
# until node 2 is the contact and serves new clients. --etcd elects the contact with etcd
# instead (etcd from Debian's packages, started in the home agent's namespace and stopped at
# the end).
#
# All traffic stays inside the namespaces this script creates; they are removed on exit,
# also on failure and Ctrl-C.
set -euo pipefail

FAILOVER=0
ETCD=0
for arg in "$@"; do
    case $arg in
    --failover) FAILOVER=1 ;;
    --etcd) FAILOVER=1 ETCD=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "demo.sh: unknown option $arg (--failover, --etcd)" >&2
        exit 2
        ;;
    esac
done

cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "demo.sh: needs root (network namespaces, XDP, AF_XDP)" >&2
    exit 1
fi

bash scripts/setup.sh

echo "== building dsnode, dsha, dsctl and dsxdp (release)"
cargo build --release -p ds-apps -p ds-xdp
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"
for b in dsnode dsha dsctl dsxdp; do
    [[ -x $BIN/$b ]] || { echo "demo.sh: $BIN/$b not found after build" >&2; exit 1; }
done

TAG="ds-demo"
LAN="$TAG-lan-$$"
CLI="$TAG-cli-$$"
HA="$TAG-ha-$$"
N1="$TAG-n1-$$"
N2="$TAG-n2-$$"
NSS=("$LAN" "$CLI" "$HA" "$N1" "$N2")
CLIENT_ADDR="fd00:d5:1::c"
HA_ADDR="fd00:d5:1::a"
COA=("fd00:d5:1::1" "fd00:d5:1::2")
CTL=("fd00:d5:1::11" "fd00:d5:1::12")
MAC=("02:d5:00:00:00:01" "02:d5:00:00:00:02")
DS="fd00:d5:80::80"
SIZE=1000000
QUOTA=500000
PIN_DIR="/sys/fs/bpf/ds/$TAG-$$"
WORK=$(mktemp -d -t ds-demo.XXXXXX)
ROOT="$WORK/www"
PIDS=()
NODE_PIDS=()

# Stop one of our processes: SIGINT (it cleans up after itself), then SIGKILL after 5 s.
stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    trap - INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$PIN_DIR" "$PIN_DIR-lh"
    if ((rc != 0 && rc != 130)); then
        for log in dsha n1 n2; do
            if [[ -s $WORK/$log.log ]]; then
                echo "== $log log (last 20 lines)" >&2
                tail -n 20 "$WORK/$log.log" >&2
            fi
            if [[ -s $WORK/$log.out ]]; then
                echo "== $log output" >&2
                cat "$WORK/$log.out" >&2
            fi
        done
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Leftovers of an earlier demo that was killed hard (its PID is gone): remove them.
for ns in $(ip netns list | awk '{print $1}' | grep -E "^$TAG-(lan|cli|ha|n1|n2|srv)-[0-9]+\$" || true); do
    pid=${ns##*-}
    if ! kill -0 "$pid" 2>/dev/null; then
        # A process orphaned in there would keep the namespace alive: stop it first.
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    fi
done
for dir in /sys/fs/bpf/ds/"$TAG"-*; do
    [[ -d $dir ]] || continue
    pid=${dir#/sys/fs/bpf/ds/"$TAG"-}
    kill -0 "${pid%-lh}" 2>/dev/null || rm -rf "$dir"
done

echo "== creating namespaces ${NSS[*]}"
for ns in "${NSS[@]}"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
# The lan namespace only bridges frames; keep its own IPv6 (RS, MLD, DAD) off the wire.
ip netns exec "$LAN" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n "$LAN" link add br0 type bridge forward_delay 0 mcast_snooping 0
ip -n "$LAN" link set br0 up
for spec in "$CLI lc c0" "$HA lh h0" "$N1 l1 n0" "$N2 l2 n0"; do
    read -r ns port inner <<<"$spec"
    ip -n "$LAN" link add "$port" type veth peer name "$inner" netns "$ns"
    ip -n "$LAN" link set "$port" master br0
    # Checksum and segmentation offloads would hand the userspace stack and the XDP programs
    # frames with unfinished checksums or beyond the MTU.
    for f in tx rx sg tso gso gro; do
        ip netns exec "$LAN" ethtool -K "$port" "$f" off >/dev/null 2>&1 || true
        ip netns exec "$ns" ethtool -K "$inner" "$f" off >/dev/null 2>&1 || true
    done
    ip -n "$LAN" link set "$port" up
    ip -n "$ns" link set "$inner" up
done
# The home agent sends tunnelled packets back out of h0 with XDP_TX, which a veth only
# accepts when its peer (lh) runs NAPI: a pass-all XDP program (the steering program with no
# local addresses) there turns it on. Its maps are pinned only while dsxdp runs.
"$BIN/dsxdp" --netns "$LAN" --pin-dir "$PIN_DIR-lh" attach lh --program steer --mode native >/dev/null
rm -rf "$PIN_DIR-lh"
ip -n "$CLI" addr add "$CLIENT_ADDR/64" dev c0 nodad
ip -n "$HA" addr add "$HA_ADDR/64" dev h0 nodad
ip -n "$N1" addr add "${CTL[0]}/64" dev n0 nodad
ip -n "$N2" addr add "${CTL[1]}/64" dev n0 nodad
ip -n "$CLI" route add "$DS/128" via "$HA_ADDR" dev c0
# A home agent is a router (RFC 6275 §10.4.1); the XDP program's FIB lookup needs forwarding.
ip netns exec "$HA" sysctl -qw net.ipv6.conf.all.forwarding=1
# The nodes' stacks do not announce the shared DS address, so the home agent knows their
# care-of addresses' link-layer addresses from the start.
for i in 0 1; do
    ip -n "$HA" neigh replace "${COA[$i]}" lladdr "${MAC[$i]}" dev h0 nud permanent
done

mkdir -p "$ROOT"
head -c "$SIZE" /dev/urandom >"$ROOT/obj"
want=$(sha256sum "$ROOT/obj" | awk '{print $1}')
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/secret")

# Wait until a process's log shows it is ready, or fail if it died or took too long.
wait_ready() {
    local pid=$1 log=$2 pattern=$3 name=$4
    for _ in $(seq 100); do
        grep -q "$pattern" "$log" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || { echo "demo.sh: $name exited early" >&2; exit 1; }
        sleep 0.1
    done
    echo "demo.sh: $name not ready after 10 s" >&2
    exit 1
}

export RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1
echo "== starting the home agent (dsha xdp) in $HA"
if ((FAILOVER)); then
    binding=(--members "[$HA_ADDR]:7100")
else
    binding=(--bind "${COA[0]}")
fi
ip netns exec "$HA" "$BIN/dsha" xdp --iface h0 --addr "$HA_ADDR" --ds "$DS" "${binding[@]}" \
    --control "[$HA_ADDR]:7001" --secret-file "$WORK/secret" --pin-dir "$PIN_DIR" --json \
    >"$WORK/dsha.out" 2>"$WORK/dsha.log" &
PIDS+=($!)
wait_ready "${PIDS[-1]}" "$WORK/dsha.log" "XDP home agent up" dsha

members=()
if ((ETCD)); then
    echo "== starting etcd in $HA (the contact election's backend)"
    ip netns exec "$HA" etcd --name ds --data-dir "$WORK/etcd" \
        --listen-client-urls "http://[$HA_ADDR]:2379" --advertise-client-urls "http://[$HA_ADDR]:2379" \
        --listen-peer-urls "http://[$HA_ADDR]:2380" --initial-advertise-peer-urls "http://[$HA_ADDR]:2380" \
        --initial-cluster "ds=http://[$HA_ADDR]:2380" >"$WORK/etcd.log" 2>&1 &
    PIDS+=($!)
    wait_ready "${PIDS[-1]}" "$WORK/etcd.log" "ready to serve client requests" etcd
    members=(--election etcd --etcd "http://[$HA_ADDR]:2379")
fi

echo "== starting node 1 in $N1 and node 2 in $N2 (dsnode serve --device afxdp)"
for i in 0 1; do
    ns=$([[ $i == 0 ]] && echo "$N1" || echo "$N2")
    extra=()
    if [[ $i == 0 ]]; then
        # Node 1 gives the connection away after QUOTA response bytes, once.
        extra=(--peer "[${CTL[1]}]:7000" --handoff-after "$QUOTA" --max-handoffs 1)
    fi
    if ((FAILOVER)); then
        extra+=(--role backup --members-listen "[${CTL[$i]}]:7000" --members-ha "[$HA_ADDR]:7100"
            --control-socket "$WORK/n$((i + 1)).sock" "${members[@]}")
    fi
    ip netns exec "$ns" "$BIN/dsnode" serve --device afxdp --iface n0 --addr "${COA[$i]}" \
        --also-addr "$DS" --mac "${MAC[$i]}" --port 80 --root "$ROOT" \
        --control-listen "[${CTL[$i]}]:7000" --secret-file "$WORK/secret" \
        --ha-control "[$HA_ADDR]:7001" --drain acked "${extra[@]}" --json \
        >"$WORK/n$((i + 1)).out" 2>"$WORK/n$((i + 1)).log" &
    PIDS+=($!)
    NODE_PIDS+=($!)
    if ((FAILOVER && i == 0)); then
        # Node 1 founds the membership and registers the DS address before node 2 joins.
        wait_ready "${PIDS[-1]}" "$WORK/n1.log" "this node is the contact" "dsnode 1"
    else
        wait_ready "${PIDS[-1]}" "$WORK/n$((i + 1)).log" "serving http" "dsnode $((i + 1))"
    fi
done

# The client's TCP retransmission counter (TcpRetransSegs in /proc/net/snmp of its namespace).
retrans() {
    ip netns exec "$CLI" awk '$1 == "Tcp:" { if (!n) { for (i = 2; i <= NF; i++) if ($i == "RetransSegs") c = i; n = 1 } else print $c }' /proc/net/snmp
}

echo "== capturing on the client's interface (dumpcap)"
ip netns exec "$CLI" dumpcap -q -i c0 -s 128 -f "ip6 src $DS and tcp src port 80" \
    -w "$WORK/client.pcapng" 2>"$WORK/dumpcap.log" &
CAP_PID=$!
PIDS+=("$CAP_PID")
wait_ready "$CAP_PID" "$WORK/dumpcap.log" "Capturing on" dumpcap

retrans_before=$(retrans)
echo "== GET http://[$DS]/obj from $CLI over HTTP/1.1 (curl, kernel TCP)"
stats=$(ip netns exec "$CLI" curl -6 -g -sS --fail --http1.1 --connect-timeout 5 --max-time ${DEMO_MAX_TIME:-30} \
    -o "$WORK/got" -w '%{http_code} %{size_download} %{time_total}' "http://[$DS]/obj")
read -r code size secs <<<"$stats"
retrans_after=$(retrans)
failover_ms=""
# `dsctl members` without its counters, indented.
members_view() { awk '/^stats:/ { skip = 1; next } skip && /^  / { next } { skip = 0; print "   " $0 }'; }
if ((FAILOVER)); then
    echo "== node 1 holds the DS address:"
    ip netns exec "$N1" "$BIN/dsctl" --socket "$WORK/n1.sock" members | members_view
    echo "== kill -9 node 1 (the contact); new clients until one is served"
    t0=$(date +%s%N)
    kill -KILL "${NODE_PIDS[0]}"
    { wait "${NODE_PIDS[0]}"; } 2>/dev/null || true
    until ip netns exec "$CLI" curl -6 -g -s -I --fail --connect-timeout 0.05 --max-time 0.5 \
        -o /dev/null "http://[$DS]/obj"; do
        (($(date +%s%N) - t0 < 20000000000)) || { echo "RESULT: FAIL (no failover in 20 s)"; exit 1; }
    done
    failover_ms=$(((($(date +%s%N) - t0)) / 1000000))
    echo "   served again after $failover_ms ms (kill -> first new connection served); node 2 now:"
    # (Its own view may trail the home agent's answer by a poll.)
    for _ in $(seq 20); do
        ip netns exec "$N2" "$BIN/dsctl" --socket "$WORK/n2.sock" members | grep -q 'holds_registration: true' && break
        sleep 0.05
    done
    ip netns exec "$N2" "$BIN/dsctl" --socket "$WORK/n2.sock" members | members_view
fi
# Let the capture see the last segments, then stop everything for the reports.
sleep 0.3
stop_pid "$CAP_PID"
for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
PIDS=()

got=$(sha256sum "$WORK/got" | awk '{print $1}')
echo "HTTP $code, $size bytes in ${secs}s"

line=$(grep -m1 '"boundary_seq"' "$WORK/n1.out" || true)
if [[ -z $line ]]; then
    echo "RESULT: FAIL (node 1 reported no handoff)"
    exit 1
fi
num() { [[ $line =~ \"$1\":([-0-9.e]+|null) ]] && echo "${BASH_REMATCH[1]}"; }
[[ $line =~ \"phases_us\":\[([^]]*)\] ]] || { echo "demo.sh: no phases in: $line" >&2; exit 1; }
IFS=, read -r -a phases <<<"${BASH_REMATCH[1]}"
boundary=$(num boundary_seq)

# Client-perceived gap: from the last data segment before the handoff's sequence boundary to
# the first one at or beyond it, as the client's link saw them (sequence numbers modulo 2^32).
gap_us=$(tshark -r "$WORK/client.pcapng" -Y 'tcp.len > 0' -T fields \
    -e frame.time_relative -e tcp.seq_raw 2>/dev/null |
    awk -v b="$boundary" '
        found { next }
        { d = ($2 - b) % 4294967296; if (d < 0) d += 4294967296
          if (d < 2147483648) { if (prev != "") gap = sprintf("%.1f", ($1 - prev) * 1e6); found = 1 }
          prev = $1 }
        END { print (gap == "" ? "n/a" : gap) }') || gap_us="n/a"

echo
echo "== handoff node 1 -> node 2 (donor's report; transparent mode: the home agent moves the flow)"
names=("socket extraction" "state transfer" "socket re-creation" "return routability"
    "BU construction" "binding management" "socket activation")
for k in "${!names[@]}"; do
    printf '  %d. %-20s %10s us\n' "$((k + 1))" "${names[$k]}" "${phases[$k]}"
done
printf '  %-23s %10s us\n' "total (sum of phases)" "$(num total_us)"
printf '  %-23s %10s us\n' "wall (donor's view)" "$(num wall_us)"
printf '  %-23s %10s us\n' "drain before freeze" "$(num drain_us)"
printf '  %-23s %10s bytes (%s on the wire)\n' "connection state" "$(num state_bytes)" "$(num offer_frame_bytes)"
printf '  %-23s %10s us (at sequence %s)\n' "client-perceived gap" "$gap_us" "$boundary"
echo
echo "sent     sha256 $want"
echo "received sha256 $got"
retrans=$((retrans_after - retrans_before))
echo "client TCP retransmissions (TcpRetransSegs): $retrans"
# A number from a process's final JSON statistics (first occurrence of the key).
stat() { grep -v boundary_seq "$WORK/$1.out" | grep -o "\"$2\":[0-9]*" | head -n1 | cut -d: -f2; }
if [[ -n $(stat n1 bytes_sent) ]]; then
    echo "node 1: $(stat n1 bytes_sent) response bytes sent, $(stat n1 moved) connection handed off," \
        "$(stat n1 tcp_retransmits) TCP retransmissions"
else
    echo "node 1: killed (no final statistics)"
fi
echo "node 2: $(stat n2 bytes_sent) response bytes sent, $(stat n2 adopted) connection adopted," \
    "$(stat n2 tcp_retransmits) TCP retransmissions"
echo "home agent: $(stat dsha tx) packets tunnelled, $(stat dsha moves) flow moved," \
    "$(stat dsha flow_learned) flow learned"
if [[ $code != 200 || $size != "$SIZE" || $got != "$want" ]]; then
    echo "RESULT: FAIL (download incomplete or corrupted)"
    exit 1
fi
if ((retrans != 0)); then
    echo "RESULT: FAIL (the client retransmitted $retrans segments)"
    exit 1
fi
if ((FAILOVER)); then
    echo "RESULT: OK ($SIZE bytes intact; node 1 served $QUOTA, node 2 the rest; no client retransmission;" \
        "failover $failover_ms ms$( ((ETCD)) && echo ' with etcd'))"
else
    echo "RESULT: OK ($SIZE bytes intact; node 1 served $QUOTA, node 2 the rest; no client retransmission)"
fi
