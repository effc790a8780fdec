#!/usr/bin/env bash
# Local demo deployment: one dsnode (our userspace TCP/IPv6 stack on a TAP device) serves a
# file over HTTP to curl running on the Linux kernel's TCP in another network namespace.
#
#   [cli netns]  veth0 fd00:d5::2/64  <==veth==>  veth0 -- br0 -- dstap0  [srv netns]
#                (kernel TCP, curl)                              |
#                                                   dsnode: fd00:d5::80, port 80
#
# All traffic stays inside the two namespaces this script creates; they are removed on exit.
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "demo.sh: needs root (it creates network namespaces and a TAP device)" >&2
    exit 1
fi

bash scripts/setup.sh

echo "== building dsnode (release)"
cargo build --release -p ds-apps
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/dsnode"
[[ -x $BIN ]] || { echo "demo.sh: $BIN not found after build" >&2; exit 1; }

SRV="ds-demo-srv-$$"
CLI="ds-demo-cli-$$"
ADDR="fd00:d5::80"
CLI_ADDR="fd00:d5::2"
WORK=$(mktemp -d -t ds-demo.XXXXXX)
ROOT="$WORK/www"
NODE_PID=""

cleanup() {
    local rc=$?
    set +e
    if [[ -n $NODE_PID ]] && kill -0 "$NODE_PID" 2>/dev/null; then
        kill -INT "$NODE_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$NODE_PID" 2>/dev/null
        wait "$NODE_PID" 2>/dev/null
    fi
    ip netns del "$SRV" 2>/dev/null
    ip netns del "$CLI" 2>/dev/null
    if ((rc != 0)) && [[ -s $WORK/dsnode.log ]]; then
        echo "== dsnode log (last 40 lines)" >&2
        tail -n 40 "$WORK/dsnode.log" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Namespaces left by an earlier demo that was killed hard (its PID is gone): remove them.
for ns in $(ip netns list | awk '{print $1}' | grep -E '^ds-demo-(srv|cli)-[0-9]+$' || true); do
    pid=${ns##*-}
    if ! kill -0 "$pid" 2>/dev/null; then
        # A dsnode orphaned in there would keep the namespace alive: stop it first.
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -INT "$p" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    fi
done

echo "== creating namespaces $SRV and $CLI"
ip netns add "$SRV"
ip netns add "$CLI"
# The srv kernel only bridges frames; keep its own IPv6 (RS, MLD, DAD) off the wire.
ip netns exec "$SRV" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n "$SRV" link set lo up
ip -n "$CLI" link set lo up
ip -n "$SRV" link add veth0 type veth peer name veth0 netns "$CLI"
ip -n "$SRV" link add br0 type bridge forward_delay 0 mcast_snooping 0
ip -n "$SRV" link set veth0 master br0
ip -n "$SRV" link set veth0 up
ip -n "$SRV" link set br0 up
ip -n "$CLI" addr add "$CLI_ADDR/64" dev veth0 nodad
ip -n "$CLI" link set veth0 up
# Checksum offload would hand our stack frames with unfinished checksums.
ip netns exec "$SRV" ethtool -K veth0 tx off >/dev/null
ip netns exec "$CLI" ethtool -K veth0 tx off >/dev/null

mkdir -p "$ROOT"
head -c 1048576 /dev/urandom >"$ROOT/file"
want=$(sha256sum "$ROOT/file" | awk '{print $1}')

echo "== starting dsnode in $SRV"
RUST_LOG="${RUST_LOG:-info}" ip netns exec "$SRV" "$BIN" serve --device tap --iface dstap0 \
    --addr "$ADDR" --port 80 --root "$ROOT" >"$WORK/dsnode.out" 2>"$WORK/dsnode.log" &
NODE_PID=$!

for _ in $(seq 100); do
    ip -n "$SRV" link show dstap0 >/dev/null 2>&1 && break
    kill -0 "$NODE_PID" 2>/dev/null || { echo "demo.sh: dsnode exited early" >&2; exit 1; }
    sleep 0.1
done
ip -n "$SRV" link show dstap0 >/dev/null 2>&1 || { echo "demo.sh: dstap0 did not appear" >&2; exit 1; }
ip -n "$SRV" link set dstap0 master br0
ip -n "$SRV" link set dstap0 up
ip netns exec "$SRV" ethtool -K dstap0 tx off >/dev/null 2>&1 || true

echo "== GET http://[$ADDR]/file from $CLI (kernel TCP -> dsnode)"
curl_out="$WORK/file.out"
stats=$(ip netns exec "$CLI" curl -6 -g -sS --fail --retry 5 --retry-connrefused --retry-delay 1 \
    --connect-timeout 5 --max-time 60 -o "$curl_out" \
    -w '%{http_code} %{size_download} %{time_total} %{speed_download}' "http://[$ADDR]/file")
read -r code size secs speed <<<"$stats"
got=$(sha256sum "$curl_out" | awk '{print $1}')
echo "HTTP $code, $size bytes in ${secs}s ($(awk -v s="$speed" 'BEGIN { printf "%.1f", s * 8 / 1e6 }') Mbit/s)"
echo "sent     sha256 $want"
echo "received sha256 $got"
if [[ $got != "$want" ]]; then
    echo "RESULT: FAIL (checksum mismatch)"
    exit 1
fi
echo "RESULT: OK (1 MiB file served by dsnode arrived intact)"

missing=$(ip netns exec "$CLI" curl -6 -g -sS -o /dev/null --max-time 10 -w '%{http_code}' "http://[$ADDR]/no-such-file")
echo "GET /no-such-file -> HTTP $missing (expected 404)"
[[ $missing == 404 ]] || { echo "RESULT: FAIL (expected 404)"; exit 1; }

echo "== stopping dsnode (SIGINT)"
kill -INT "$NODE_PID"
node_rc=0
wait "$NODE_PID" || node_rc=$?
NODE_PID=""
echo "dsnode exited with status $node_rc"
echo "== dsnode stats"
cat "$WORK/dsnode.out"
((node_rc == 0)) || exit 1
