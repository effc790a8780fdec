// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Steering program for server nodes.
 *
 * Packets for one of the node's configured addresses (its care-of address, the DS address
 * when it is the contact node) and configured protocols go to the AF_XDP socket bound to the
 * receive queue (XSKMAP); everything else goes on to the kernel with XDP_PASS, so the host's own
 * traffic keeps working. IPv6-in-IPv6 packets (RFC 2473) addressed to the node are
 * decapsulated first and the inner packet is steered by the same rules: that is how the home
 * agent's tunnel program delivers a flow to its owner in transparent mode.
 *
 * Held flows (kernel-path nodes moving a connection with TCP_REPAIR): a TCP packet whose
 * 4-tuple is in `held_flows` is copied whole (IPv6 header on, after decapsulation: exactly what
 * the socket would have received) into the `hold_ring` ring buffer and dropped, so the frozen
 * socket never sees it; userspace hands it to the acceptor. Holding or releasing a flow is one
 * map update from userspace.
 */
#include "common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct in6_addr);
	__type(value, struct local_addr);
} local_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_NR);
	__type(key, __u32);
	__type(value, __u64);
} steer_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct hold_key);
	__type(value, struct hold_val);
} held_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} hold_ring SEC(".maps");

/* A record is assembled here (bpf_xdp_load_bytes needs memory, not the packet) and copied
 * into the ring with bpf_ringbuf_output, whose size may vary (bpf_ringbuf_reserve's may not). */
struct hold_scratch {
	struct hold_rec rec;
	__u8 data[HOLD_MAX_PKT];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hold_scratch);
} hold_scratch SEC(".maps");

/* If the TCP packet at `ip6` (its TCP header at `l4`) belongs to a held flow, copy it to
 * `hold_ring` and return XDP_DROP; -1 if the flow is not held. `ip6` must follow the Ethernet
 * header at the start of the frame. */
static __always_inline int hold_tcp(struct xdp_md *ctx, struct ipv6hdr *ip6, void *l4,
				    void *data_end)
{
	struct hold_scratch *s;
	struct hold_key key;
	struct hold_val *v;
	__be16 *ports = l4;
	__u32 zero = 0, len, avail;

	if ((void *)(ports + 2) > data_end)
		return -1;
	__builtin_memcpy(&key.local, &ip6->daddr, sizeof(key.local));
	__builtin_memcpy(&key.remote, &ip6->saddr, sizeof(key.remote));
	key.rport = ports[0];
	key.lport = ports[1];
	v = bpf_map_lookup_elem(&held_flows, &key);
	if (!v)
		return -1;
	/* The packet as the IPv6 header delimits it (RFC 8200 §3: Payload Length), without any
	 * link-layer padding; the whole frame, fragments of a multi-buffer one included. */
	len = sizeof(struct ipv6hdr) + bpf_ntohs(ip6->payload_len);
	avail = bpf_xdp_get_buff_len(ctx) - sizeof(struct ethhdr);
	if (len > avail || len > HOLD_MAX_PKT)
		goto lost;
	s = bpf_map_lookup_elem(&hold_scratch, &zero);
	if (!s)
		goto lost;
	s->rec.key = key;
	s->rec.len = len;
	if (bpf_xdp_load_bytes(ctx, sizeof(struct ethhdr), s->data, len))
		goto lost;
	if (bpf_ringbuf_output(&hold_ring, s, sizeof(s->rec) + len, 0))
		goto lost;
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, len);
	count(&steer_stats, STEER_HELD);
	return XDP_DROP;
lost:
	__sync_fetch_and_add(&v->lost, 1);
	count(&steer_stats, STEER_DROP_HOLD_LOST);
	return XDP_DROP;
}

static __always_inline __u32 proto_bit(__u8 nh)
{
	switch (nh) {
	case NEXTHDR_TCP:
		return PROTO_TCP;
	case NEXTHDR_UDP:
		return PROTO_UDP;
	case NEXTHDR_ICMPV6:
		return PROTO_ICMPV6;
	case NEXTHDR_MOBILITY:
		return PROTO_MOBILITY;
	default:
		return 0;
	}
}

static __always_inline int to_socket(struct xdp_md *ctx)
{
	__u32 q = ctx->rx_queue_index;
	if (!bpf_map_lookup_elem(&xsks_map, &q)) {
		count(&steer_stats, STEER_PASS_NO_SOCKET);
		return XDP_PASS;
	}
	count(&steer_stats, STEER_XSK);
	return bpf_redirect_map(&xsks_map, q, XDP_PASS);
}

static __always_inline int steer_ipv6(struct xdp_md *ctx);

SEC("xdp")
int ds_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end) {
		count(&steer_stats, STEER_DROP_MALFORMED);
		return XDP_DROP;
	}
	if (eth->h_proto != bpf_htons(ETH_P_IPV6)) {
		count(&steer_stats, STEER_PASS_NOT_IPV6);
		return XDP_PASS;
	}
	return steer_ipv6(ctx);
}

/* Remove the outer IPv6 header (RFC 2473 §4: the tunnel exit point strips it) by moving the
 * Ethernet header forward over it. */
static __always_inline int decapsulate(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr eth;

	if (data + sizeof(eth) > data_end)
		return -1;
	__builtin_memcpy(&eth, data, sizeof(eth));
	if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct ipv6hdr)))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(eth) > data_end)
		return -1;
	__builtin_memcpy(data, &eth, sizeof(eth));
	return 0;
}

static __always_inline int steer_inner(struct xdp_md *ctx);

/* Decide for the IPv6 packet behind the Ethernet header. */
static __always_inline int steer_ipv6(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	struct local_addr *la;
	void *pos;
	__u8 nh;
	int r;

	if ((void *)(ip6 + 1) > data_end || ip6->version != 6) {
		count(&steer_stats, STEER_DROP_MALFORMED);
		return XDP_DROP;
	}
	la = bpf_map_lookup_elem(&local_addrs, &ip6->daddr);
	nh = ip6->nexthdr;
	pos = ip6 + 1;
	r = skip_ext_hdrs(data_end, &pos, &nh);
	if (r < 0) {
		count(&steer_stats, STEER_DROP_MALFORMED);
		return XDP_DROP;
	}

	/* Held flows arriving natively (no tunnel), to a kernel-path address or to one the
	 * program was not told about (a host that loaded it only to hold). */
	if (r == 0 && nh == NEXTHDR_TCP && (!la || la->action == ACTION_PASS)) {
		int v = hold_tcp(ctx, ip6, pos, data_end);
		if (v >= 0)
			return v;
	}

	if (!la) {
		/* Neighbour solicitations for our addresses go to the solicited-node multicast
		 * address (RFC 4861 §7.2.2): steer them by their target. */
		if (ip6->daddr.in6_u.u6_addr8[0] == 0xff && r == 0 && nh == NEXTHDR_ICMPV6) {
			__u8 *icmp = pos;
			/* Other ICMPv6 (RS, MLD...) may be shorter: only an NS must hold a target. */
			if ((void *)(icmp + 24) <= data_end && icmp[0] == 135 /* NS */) {
				struct in6_addr target;
				__builtin_memcpy(&target, icmp + 8, sizeof(target));
				la = bpf_map_lookup_elem(&local_addrs, &target);
				if (la && la->action == ACTION_XSK && (la->protos & PROTO_ICMPV6))
					return to_socket(ctx);
			}
		}
		count(&steer_stats, STEER_PASS_NOT_LOCAL);
		return XDP_PASS;
	}

	if (nh == NEXTHDR_IPV6 && r == 0) {
		/* The outer header must be the plain 40 bytes for a cheap decapsulation. */
		if (pos != (void *)(ip6 + 1)) {
			count(&steer_stats, STEER_PASS_PROTO);
			return XDP_PASS;
		}
		if (pos + sizeof(struct ipv6hdr) > data_end) {
			count(&steer_stats, STEER_DROP_MALFORMED);
			return XDP_DROP;
		}
		if (decapsulate(ctx)) {
			count(&steer_stats, STEER_DROP_ERROR);
			return XDP_DROP;
		}
		count(&steer_stats, STEER_DECAP);
		return steer_inner(ctx);
	}

	/* Non-first fragments (r == 1) follow their address: the stack reassembles them. */
	if (r == 0 && !(la->protos & proto_bit(nh))) {
		count(&steer_stats, STEER_PASS_PROTO);
		return XDP_PASS;
	}
	if (la->action == ACTION_PASS) {
		count(&steer_stats, STEER_PASS_KERNEL);
		return XDP_PASS;
	}
	return to_socket(ctx);
}

/* The inner packet after decapsulation: same rules, no further decapsulation. A separate
 * copy of the logic keeps the verifier's view of each path simple. */
static __always_inline int steer_inner(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	struct local_addr *la;
	void *pos;
	__u8 nh;
	int r;

	if ((void *)(ip6 + 1) > data_end || ip6->version != 6) {
		count(&steer_stats, STEER_DROP_MALFORMED);
		return XDP_DROP;
	}
	la = bpf_map_lookup_elem(&local_addrs, &ip6->daddr);
	if (!la) {
		count(&steer_stats, STEER_DROP_DECAP_FOREIGN);
		return XDP_DROP;
	}
	nh = ip6->nexthdr;
	pos = ip6 + 1;
	r = skip_ext_hdrs(data_end, &pos, &nh);
	if (r < 0) {
		count(&steer_stats, STEER_DROP_MALFORMED);
		return XDP_DROP;
	}
	/* Held flows delivered through the home agent's tunnel, as the socket sees them. */
	if (r == 0 && nh == NEXTHDR_TCP && la->action == ACTION_PASS) {
		int v = hold_tcp(ctx, ip6, pos, data_end);
		if (v >= 0)
			return v;
	}
	if (r == 0 && !(la->protos & proto_bit(nh))) {
		count(&steer_stats, STEER_PASS_PROTO);
		return XDP_PASS;
	}
	if (la->action == ACTION_PASS) {
		count(&steer_stats, STEER_PASS_KERNEL);
		return XDP_PASS;
	}
	return to_socket(ctx);
}
