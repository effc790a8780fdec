// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Tunnel (redirect) program for the home agent: the transparent mode of the distributed
 * server (seed §3.1.1). Client packets for a home address (the DS address) are looked up by
 * flow; a hit is encapsulated IPv6-in-IPv6 (RFC 2473) towards the care-of address of the node
 * that owns the flow, a miss falls back to the home address's binding (the contact node) and,
 * when learning is on, creates the flow entry so later binding changes leave the flow where it
 * is. ICMPv6 errors about a tunnelled flow (RFC 4443 §2.4: they quote the offending packet,
 * which went from the DS address to the client) are tunnelled to the flow's owner.
 *
 * Flows moved by a handoff live in `moved_flows`, a plain hash the program never adds to or
 * evicts from (the flow agent writes and ages it), looked up first: spoofed traffic that
 * churns the learned LRU table cannot push a moved connection back to the contact node. A
 * TCP flow is learned only from its SYN (a segment of a connection the table does not know
 * follows the binding, unlearned), so a flood of spoofed non-SYN segments learns nothing.
 */
#include "common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#ifndef AF_INET6
#define AF_INET6 10
#endif

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); /* resized by the loader before load */
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} flows SEC(".maps");

/* Flows moved by a handoff (written by the flow agent only). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} moved_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct in6_addr);   /* home address (the DS address) */
	__type(value, struct in6_addr); /* care-of address of the contact node */
} bindings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tunnel_cfg);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TUN_NR);
	__type(key, __u32);
	__type(value, __u64);
} tunnel_stats SEC(".maps");

/* Per-CPU time of the last Packet Too Big sent, for RFC 4443 §2.4(f) rate limiting. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} ptb_last SEC(".maps");

/* At most one Packet Too Big per CPU per millisecond. */
#define PTB_INTERVAL_NS 1000000ULL
/* Bytes of the offending packet quoted in a Packet Too Big: as much as fits in the IPv6
 * minimum MTU (1280 - 40 - 8 = 1232, RFC 4443 §3.2), rounded down to whole 64-byte checksum
 * chunks so that every bpf_csum_diff() call has a constant size the verifier can check. */
#define PTB_QUOTE 1216
#define PTB_CHUNK 64

/* Turn the packet into an ICMPv6 Packet Too Big (RFC 4443 §3.2) from the tunnel entry point
 * to its source, reporting `mtu` (the link MTU less the tunnel header, RFC 2473 §7.1), and
 * send it back where it came from. Returns 0 when the reply is ready for XDP_TX. */
static __always_inline int packet_too_big(struct xdp_md *ctx, const struct in6_addr *local,
					  __u32 mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (struct ipv6hdr *)(eth + 1);
	struct ethhdr old;
	struct in6_addr src, from;
	__u32 zero = 0;
	__u64 now, *last;
	__u8 *icmp;
	__s64 sum;
	int cur;

	if ((void *)(ip6 + 1) > data_end || (void *)ip6 + PTB_QUOTE > data_end)
		return -1;
	/* Never about multicast or unspecified sources (RFC 4443 §2.4(e)). */
	if (ip6->saddr.in6_u.u6_addr8[0] == 0xff || ip6->daddr.in6_u.u6_addr8[0] == 0xff)
		return -1;
	last = bpf_map_lookup_elem(&ptb_last, &zero);
	if (!last)
		return -1;
	now = bpf_ktime_get_ns();
	if (now - *last < PTB_INTERVAL_NS)
		return -1;
	*last = now;
	__builtin_memcpy(&old, eth, sizeof(old));
	__builtin_memcpy(&src, &ip6->saddr, sizeof(src));
	__builtin_memcpy(&from, local, sizeof(from));

	/* Room for the new IPv6 + ICMPv6 headers in front of the quoted packet. */
	if (bpf_xdp_adjust_head(ctx, -(int)(sizeof(struct ipv6hdr) + 8)))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	cur = data_end - data;
	if (bpf_xdp_adjust_tail(ctx, (int)(sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + 8 +
					   PTB_QUOTE) - cur))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip6 = (struct ipv6hdr *)(eth + 1);
	icmp = (__u8 *)(ip6 + 1);
	if ((void *)(icmp + 8 + PTB_QUOTE) > data_end)
		return -1;

	__builtin_memcpy(eth->h_dest, old.h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, old.h_dest, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IPV6);
	*(__be32 *)ip6 = bpf_htonl(6u << 28);
	ip6->payload_len = bpf_htons(8 + PTB_QUOTE);
	ip6->nexthdr = NEXTHDR_ICMPV6;
	ip6->hop_limit = 64;
	__builtin_memcpy(&ip6->saddr, &from, sizeof(from));
	__builtin_memcpy(&ip6->daddr, &src, sizeof(src));
	icmp[0] = 2; /* Packet Too Big */
	icmp[1] = 0;
	icmp[2] = 0;
	icmp[3] = 0;
	*(__be32 *)(icmp + 4) = bpf_htonl(mtu);

	/* RFC 4443 §2.3 checksum: pseudo-header (RFC 8200 §8.1), header, quote. */
	{
		__be32 ph[2] = { bpf_htonl(8 + PTB_QUOTE), bpf_htonl(NEXTHDR_ICMPV6) };
		sum = bpf_csum_diff(0, 0, (__be32 *)&ip6->saddr, 32, 0);
		sum = bpf_csum_diff(0, 0, ph, sizeof(ph), (__wsum)sum);
		sum = bpf_csum_diff(0, 0, (__be32 *)icmp, 8, (__wsum)sum);
	}
#pragma unroll
	for (int i = 0; i < PTB_QUOTE / PTB_CHUNK; i++) {
		__u8 *p = icmp + 8 + i * PTB_CHUNK;
		if ((void *)(p + PTB_CHUNK) > data_end)
			return -1;
		sum = bpf_csum_diff(0, 0, (__be32 *)p, PTB_CHUNK, (__wsum)sum);
	}
	{
		__u32 c = (__u32)sum;
		c = (c & 0xffff) + (c >> 16);
		c = (c & 0xffff) + (c >> 16);
		*(__u16 *)(icmp + 2) = (__u16)~c;
	}
	return 0;
}

/* A 20-bit flow label from the flow's 5-tuple, so that ECMP/LAG along the tunnel keep a flow
 * on one path (RFC 6438 §3). */
static __always_inline __u32 flow_label(const struct flow_key *k)
{
	const __u32 *w = (const __u32 *)k;
	__u32 h = 0x9e3779b9;
#pragma unroll
	for (int i = 0; i < 10; i++) {
		h ^= w[i];
		h *= 0x85ebca6b;
		h ^= h >> 13;
	}
	h &= 0xfffff;
	return h ? h : 1;
}

/* Fill `k` from an ICMPv6 error's quoted packet (client <- DS address), reversed into the
 * client -> DS direction of the flow. Returns 0 on success, -1 if the quote is too short. */
static __always_inline int quoted_flow(void *data_end, __u8 *icmp, struct flow_key *k)
{
	struct ipv6hdr *q = (struct ipv6hdr *)(icmp + 8);
	__be16 *ports = (__be16 *)(q + 1);

	if ((void *)(q + 1) > data_end)
		return -1;
	__builtin_memcpy(&k->src, &q->daddr, sizeof(k->src));
	__builtin_memcpy(&k->dst, &q->saddr, sizeof(k->dst));
	k->proto = q->nexthdr;
	if (q->nexthdr == NEXTHDR_TCP || q->nexthdr == NEXTHDR_UDP) {
		if ((void *)(ports + 2) > data_end)
			return -1;
		k->sport = ports[1];
		k->dport = ports[0];
	}
	return 0;
}

SEC("xdp")
int ds_tunnel(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6;
	struct in6_addr *binding;
	struct tunnel_cfg *cfg;
	struct flow_key key = {};
	struct flow_val *fv;
	struct in6_addr owner;
	struct ethhdr old_eth;
	__u32 zero = 0, verdict, inner_len, mtu, label, tc, learnable;
	void *pos;
	__u8 nh;
	int r;

	if ((void *)(eth + 1) > data_end) {
		count(&tunnel_stats, TUN_DROP_MALFORMED);
		return XDP_DROP;
	}
	if (eth->h_proto != bpf_htons(ETH_P_IPV6)) {
		count(&tunnel_stats, TUN_PASS_NOT_IPV6);
		return XDP_PASS;
	}
	ip6 = (struct ipv6hdr *)(eth + 1);
	if ((void *)(ip6 + 1) > data_end || ip6->version != 6) {
		count(&tunnel_stats, TUN_DROP_MALFORMED);
		return XDP_DROP;
	}
	binding = bpf_map_lookup_elem(&bindings, &ip6->daddr);
	if (!binding) {
		count(&tunnel_stats, TUN_PASS_NO_BINDING);
		return XDP_PASS;
	}
	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg) {
		count(&tunnel_stats, TUN_DROP_ERROR);
		return XDP_DROP;
	}
	inner_len = (__u32)bpf_ntohs(ip6->payload_len) + sizeof(struct ipv6hdr);
	if ((void *)ip6 + inner_len > data_end) {
		count(&tunnel_stats, TUN_DROP_MALFORMED);
		return XDP_DROP;
	}

	__builtin_memcpy(&key.src, &ip6->saddr, sizeof(key.src));
	__builtin_memcpy(&key.dst, &ip6->daddr, sizeof(key.dst));
	nh = ip6->nexthdr;
	pos = ip6 + 1;
	r = skip_ext_hdrs(data_end, &pos, &nh);
	if (r < 0) {
		count(&tunnel_stats, TUN_DROP_MALFORMED);
		return XDP_DROP;
	}
	key.proto = nh;
	verdict = TUN_FLOW_HIT;
	/* Whether a miss may create a flow entry: a TCP SYN (without ACK), or any UDP packet. */
	learnable = 0;
	if (r == 0 && (nh == NEXTHDR_TCP || nh == NEXTHDR_UDP)) {
		__be16 *ports = pos;
		if ((void *)(ports + 2) > data_end) {
			count(&tunnel_stats, TUN_DROP_MALFORMED);
			return XDP_DROP;
		}
		key.sport = ports[0];
		key.dport = ports[1];
		if (nh == NEXTHDR_UDP) {
			learnable = 1;
		} else {
			__u8 *flags = (__u8 *)pos + 13; /* RFC 9293 §3.1: CWR ECE URG ACK PSH RST SYN FIN */
			if ((void *)(flags + 1) > data_end) {
				count(&tunnel_stats, TUN_DROP_MALFORMED);
				return XDP_DROP;
			}
			learnable = (*flags & 0x12) == 0x02;
		}
	} else if (r == 0 && nh == NEXTHDR_ICMPV6) {
		__u8 *icmp = pos;
		if ((void *)(icmp + 8) > data_end) {
			count(&tunnel_stats, TUN_DROP_MALFORMED);
			return XDP_DROP;
		}
		/* Error messages have types 0..127 (RFC 4443 §2.1). */
		if (icmp[0] < 128) {
			struct flow_key q = {};
			if (quoted_flow(data_end, icmp, &q) == 0) {
				__builtin_memcpy(&key, &q, sizeof(key));
				verdict = TUN_ICMP_ERROR;
			}
		}
	}

	/* RFC 2473 §3.1: the tunnel entry point forwards the original packet, so its hop limit
	 * is decremented; one that would expire goes to the kernel, which answers with Time
	 * Exceeded. */
	if (ip6->hop_limit <= 1) {
		count(&tunnel_stats, TUN_PASS_HOP_LIMIT);
		return XDP_PASS;
	}

	mtu = cfg->mtu ? cfg->mtu : 1500;
	if (inner_len + sizeof(struct ipv6hdr) > mtu) {
		/* RFC 2473 §7.1: tell the source the tunnel's MTU; never about an ICMPv6 error
		 * (RFC 4443 §2.4(e)). Rate-limited; otherwise dropped. */
		if (verdict != TUN_ICMP_ERROR && mtu >= 1280 + sizeof(struct ipv6hdr)) {
			struct in6_addr local;
			__builtin_memcpy(&local, &cfg->local, sizeof(local));
			if (packet_too_big(ctx, &local, mtu - sizeof(struct ipv6hdr)) == 0) {
				count(&tunnel_stats, TUN_PTB);
				return XDP_TX;
			}
			/* The packet may have been changed: it is dropped either way. */
		}
		count(&tunnel_stats, TUN_DROP_TOO_BIG);
		return XDP_DROP;
	}

	fv = bpf_map_lookup_elem(&moved_flows, &key);
	if (!fv)
		fv = bpf_map_lookup_elem(&flows, &key);
	if (fv) {
		__builtin_memcpy(&owner, &fv->owner, sizeof(owner));
		__sync_fetch_and_add(&fv->packets, 1);
		__sync_fetch_and_add(&fv->bytes, inner_len);
	} else {
		__builtin_memcpy(&owner, binding, sizeof(owner));
		if (cfg->learn && verdict == TUN_FLOW_HIT && !learnable) {
			count(&tunnel_stats, TUN_NOT_LEARNED);
		} else if (cfg->learn && verdict == TUN_FLOW_HIT) {
			struct flow_val nv = {};
			__builtin_memcpy(&nv.owner, &owner, sizeof(owner));
			nv.packets = 1;
			nv.bytes = inner_len;
			if (bpf_map_update_elem(&flows, &key, &nv, BPF_NOEXIST) == 0)
				count(&tunnel_stats, TUN_FLOW_LEARNED);
		}
		verdict = TUN_BINDING;
	}

	ip6->hop_limit -= 1;
	tc = (bpf_ntohl(*(__be32 *)ip6) >> 20) & 0xff;
	label = flow_label(&key);
	__builtin_memcpy(&old_eth, eth, sizeof(old_eth));

	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct ipv6hdr))) {
		count(&tunnel_stats, TUN_DROP_ERROR);
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip6 = (struct ipv6hdr *)(eth + 1);
	if ((void *)(ip6 + 2) > data_end) {
		count(&tunnel_stats, TUN_DROP_ERROR);
		return XDP_DROP;
	}
	/* RFC 2473 §6: the tunnel header. Traffic class copied from the inner packet (§6.4). */
	*(__be32 *)ip6 = bpf_htonl((6u << 28) | (tc << 20) | label);
	ip6->payload_len = bpf_htons((__u16)inner_len);
	ip6->nexthdr = NEXTHDR_IPV6;
	ip6->hop_limit = cfg->hop_limit ? cfg->hop_limit : 64;
	__builtin_memcpy(&ip6->saddr, &cfg->local, sizeof(ip6->saddr));
	__builtin_memcpy(&ip6->daddr, &owner, sizeof(ip6->daddr));
	eth->h_proto = bpf_htons(ETH_P_IPV6);

	if (cfg->mode == TUN_MODE_GATEWAY) {
		__builtin_memcpy(eth->h_dest, cfg->gw_mac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, old_eth.h_dest, ETH_ALEN);
		count(&tunnel_stats, verdict);
		count(&tunnel_stats, TUN_TX);
		return XDP_TX;
	}

	{
		struct bpf_fib_lookup fib = {};
		fib.family = AF_INET6;
		fib.ifindex = ctx->ingress_ifindex;
		fib.l4_protocol = NEXTHDR_IPV6;
		fib.tot_len = inner_len + sizeof(struct ipv6hdr);
		__builtin_memcpy(fib.ipv6_src, &ip6->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, &ip6->daddr, 16);
		r = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
		if (r == BPF_FIB_LKUP_RET_NO_NEIGH) {
			/* Encapsulated but the next hop is not resolved: the kernel forwards this
			 * one (with forwarding on) and resolves the neighbour for the next. */
			count(&tunnel_stats, TUN_PASS_NO_NEIGH);
			return XDP_PASS;
		}
		if (r != BPF_FIB_LKUP_RET_SUCCESS) {
			count(&tunnel_stats, TUN_DROP_NO_ROUTE);
			return XDP_DROP;
		}
		__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
		count(&tunnel_stats, verdict);
		if (fib.ifindex == ctx->ingress_ifindex) {
			count(&tunnel_stats, TUN_TX);
			return XDP_TX;
		}
		count(&tunnel_stats, TUN_REDIRECT);
		return bpf_redirect(fib.ifindex, 0);
	}
}
