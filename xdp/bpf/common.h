/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Shared definitions of the Distributed Servers XDP programs.
 *
 * Every struct here has a byte-for-byte mirror in xdp/src/maps.rs; keep them in sync.
 * All addresses and ports are stored in network byte order, exactly as on the wire.
 */
#ifndef DS_COMMON_H
#define DS_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define NEXTHDR_HOP 0
#define NEXTHDR_TCP 6
#define NEXTHDR_UDP 17
#define NEXTHDR_IPV6 41
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_ICMPV6 58
#define NEXTHDR_NONE 59
#define NEXTHDR_DEST 60
#define NEXTHDR_MOBILITY 135 /* RFC 6275 §6.1 */

/* Extension headers walked before giving up (bounded for the verifier). */
#define MAX_EXT_HDRS 4

/* Bits of struct local_addr.protos. */
#define PROTO_TCP (1u << 0)
#define PROTO_UDP (1u << 1)
#define PROTO_ICMPV6 (1u << 2)
#define PROTO_MOBILITY (1u << 3)

/* struct local_addr.action */
#define ACTION_XSK 0  /* to the AF_XDP socket of the receive queue */
#define ACTION_PASS 1 /* to the kernel stack (kernel-path nodes) */

/* Value of the steering program's `local_addrs` map (key: struct in6_addr). */
struct local_addr {
	__u32 protos;
	__u32 action;
};

/* Key of the tunnel program's `flows` map: the client->DS direction of a flow. */
struct flow_key {
	struct in6_addr src;
	struct in6_addr dst;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* Value of `flows`: the owner's care-of address and what went through. */
struct flow_val {
	struct in6_addr owner;
	__u64 packets;
	__u64 bytes;
};

/* tunnel_cfg.mode */
#define TUN_MODE_FIB 0    /* bpf_fib_lookup on the outer destination; XDP_TX or XDP_REDIRECT */
#define TUN_MODE_GATEWAY 1 /* XDP_TX to a fixed next-hop MAC (gw_mac) */

/* Single entry of the tunnel program's `tunnel_cfg` array. */
struct tunnel_cfg {
	struct in6_addr local; /* outer source: the home agent's address */
	__u8 gw_mac[6];
	__u8 mode;
	__u8 hop_limit; /* outer hop limit (RFC 2473 §6.3); 0 means 64 */
	__u16 mtu;      /* link MTU; 0 means 1500 */
	__u8 learn;     /* insert a flow entry when a packet falls back to the binding */
	__u8 pad[5];
};

/* Key of the steering program's `held_flows` map: one TCP connection as the local socket sees
 * it (the inner packet's destination is `local`, its source `remote`). */
struct hold_key {
	struct in6_addr local;
	struct in6_addr remote;
	__be16 lport;
	__be16 rport;
};

/* Value of `held_flows`: what the program held for the flow (updated atomically). */
struct hold_val {
	__u64 packets;
	__u64 bytes;
	__u64 lost; /* dropped: ring buffer full or packet above HOLD_MAX_PKT */
};

/* Largest packet (IPv6 header included) a hold copies out. */
#define HOLD_MAX_PKT 9216

/* Header of each `hold_ring` record, followed by `len` bytes of IPv6 packet. */
struct hold_rec {
	struct hold_key key;
	__u32 len;
};

_Static_assert(sizeof(struct hold_key) == 36, "mirrored in xdp/src/maps.rs");
_Static_assert(sizeof(struct hold_val) == 24, "mirrored in xdp/src/maps.rs");
_Static_assert(sizeof(struct hold_rec) == 40, "mirrored in xdp/src/maps.rs");
_Static_assert(sizeof(struct local_addr) == 8, "mirrored in xdp/src/maps.rs");
_Static_assert(sizeof(struct flow_key) == 40, "mirrored in xdp/src/maps.rs");
_Static_assert(sizeof(struct flow_val) == 32, "mirrored in xdp/src/maps.rs");
_Static_assert(sizeof(struct tunnel_cfg) == 32, "mirrored in xdp/src/maps.rs");

/* Steering program verdict counters (per-CPU array `steer_stats`). The first group sums to
 * the number of packets seen. */
enum steer_counter {
	STEER_XSK = 0,          /* redirected to an AF_XDP socket */
	STEER_PASS_NOT_IPV6,    /* not IPv6: passed */
	STEER_PASS_NOT_LOCAL,   /* IPv6 not for a configured address: passed */
	STEER_PASS_PROTO,       /* for us, protocol not configured: passed */
	STEER_PASS_KERNEL,      /* for us, configured to go to the kernel: passed */
	STEER_PASS_NO_SOCKET,   /* for us, but no socket on this queue: passed */
	STEER_DROP_MALFORMED,   /* truncated or malformed: dropped */
	STEER_DROP_DECAP_FOREIGN, /* tunnelled to us, inner not for a configured address: dropped */
	STEER_DROP_ERROR,       /* a helper failed: dropped */
	STEER_HELD,             /* a held flow's packet: copied to hold_ring, dropped */
	STEER_DROP_HOLD_LOST,   /* a held flow's packet that could not be copied: dropped */
	/* informational */
	STEER_DECAP,            /* IPv6-in-IPv6 decapsulated (then counted again by its verdict) */
	STEER_NR,
};

/* Tunnel program counters (per-CPU array `tunnel_stats`). The first group sums to the number
 * of packets seen. */
enum tunnel_counter {
	TUN_FLOW_HIT = 0,       /* flow found: encapsulated to its owner */
	TUN_BINDING,            /* flow miss, binding hit: encapsulated to the contact node */
	TUN_ICMP_ERROR,         /* ICMPv6 error about a tunnelled flow: encapsulated to its owner */
	TUN_PASS_NOT_IPV6,      /* not IPv6: passed */
	TUN_PASS_NO_BINDING,    /* not for a home address: passed */
	TUN_PASS_HOP_LIMIT,     /* hop limit would expire: passed (the kernel answers) */
	TUN_PASS_NO_NEIGH,      /* FIB: next hop not resolved yet: passed */
	TUN_DROP_MALFORMED,     /* truncated or malformed: dropped */
	TUN_DROP_TOO_BIG,       /* encapsulated packet would exceed the MTU: dropped */
	TUN_DROP_NO_ROUTE,      /* FIB lookup failed: dropped */
	TUN_DROP_ERROR,         /* a helper failed: dropped */
	TUN_PTB,                /* too big once encapsulated: answered with Packet Too Big */
	/* informational */
	TUN_FLOW_LEARNED,       /* flow entry created from the binding */
	TUN_TX,                 /* sent with XDP_TX */
	TUN_REDIRECT,           /* sent with XDP_REDIRECT */
	TUN_NOT_LEARNED,        /* flow miss, not a TCP SYN or UDP: followed the binding unlearned */
	TUN_NR,
};

struct frag_hdr6 {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset << 3 | flags */
	__be32 identification;
};

struct opt_hdr6 {
	__u8 nexthdr;
	__u8 hdrlen;
};

/* Walk at most MAX_EXT_HDRS extension headers (RFC 8200 §4) starting at *pos with next
 * header *nh. Returns 0 when *nh is an upper-layer protocol (or unknown) and *pos its header,
 * 1 for a non-first fragment (no upper-layer header here), -1 if truncated. */
static __always_inline int skip_ext_hdrs(void *data_end, void **pos, __u8 *nh)
{
#pragma unroll
	for (int i = 0; i < MAX_EXT_HDRS; i++) {
		switch (*nh) {
		case NEXTHDR_HOP:
		case NEXTHDR_ROUTING:
		case NEXTHDR_DEST: {
			struct opt_hdr6 *h = *pos;
			if ((void *)(h + 1) > data_end)
				return -1;
			*nh = h->nexthdr;
			*pos = *pos + ((__u32)h->hdrlen + 1) * 8;
			break;
		}
		case NEXTHDR_FRAGMENT: {
			struct frag_hdr6 *f = *pos;
			if ((void *)(f + 1) > data_end)
				return -1;
			*nh = f->nexthdr;
			*pos = *pos + sizeof(*f);
			if (f->frag_off & bpf_htons(0xfff8))
				return 1;
			break;
		}
		default:
			return 0;
		}
	}
	return 0;
}

static __always_inline void count(void *map, __u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(map, &idx);
	if (c)
		*c += 1; /* per-CPU: no atomics needed */
}

#endif
