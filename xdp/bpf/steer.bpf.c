// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Steering program for server nodes.
 *
 * Packets for one of the node's configured addresses (its care-of address, the DS address
 * when it is the contact node) and configured protocols go to the AF_XDP socket bound to the
 * receive queue (XSKMAP); everything else goes on to the kernel with XDP_PASS, so the host's own
 * traffic keeps working. IPv6-in-IPv6 packets (RFC 2473) addressed to the node are
 * decapsulated first and the inner packet is steered by the same rules: that is how the home
 * agent's tunnel program delivers a flow to its owner in transparent mode.
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
