// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// weft's node port balancer on the underlay device's ingress: for a packet from outside
// to one of the node's ports (or to a service address routers send to the node), it
// picks the backend with the service's Maglev table from a hash of the client's address
// and port (never the node's address, so every node picks the same one for the same
// flow) and writes the choice into the packet's mark. The nftables proxy's rules DNAT to
// the marked backend, and conntrack keeps the connection there and undoes the
// translation on the way back.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define TCX_NEXT -1

// Mirrors dataplane.MarkMaglev and MaglevIndexMask.
#define MARK_MAGLEV 0x01000000
#define MARK_INDEX 0x0000ffff

// Mirrors maglev.DefaultSize: a prime ≥ 100 × backends for up to 163 backends.
#define MAGLEV_SIZE 16381
#define MAX_SERVICES 1024

// A node port (addr all zero: any of the node's addresses) or a service address (IPv4 in
// addr[0]).
struct np_key {
	__u32 addr[4];
	__u16 port; // network byte order
	__u8 proto;
	__u8 family; // 4 or 6
};

struct np_val {
	__u32 id;
	__u32 backends; // 0: no backend (the packet is left alone)
};

struct maglev_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAGLEV_SIZE);
	__type(key, __u32);
	__type(value, __u32); // index into the nftables proxy's backend order
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct np_key);
	__type(value, struct np_val);
} np_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__array(values, struct maglev_table);
} np_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u64); // packets marked
} np_stats SEC(".maps");

// A murmur3-style mix: the same inputs give the same hash on every node.
static __always_inline __u32 mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = (k << 15) | (k >> 17);
	k *= 0x1b873593;
	h ^= k;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 finish(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

struct ports {
	__u16 source;
	__u16 dest;
};

SEC("tc")
int weft_nodeport(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return TCX_NEXT;

	struct np_key key = {};
	struct ports *l4;
	__u32 h = 0x7765667; // any seed, the same everywhere

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return TCX_NEXT;
		if (ip->frag_off & bpf_htons(0x1fff))
			return TCX_NEXT; // no transport header here
		l4 = (void *)ip + ip->ihl * 4;
		key.proto = ip->protocol;
		key.family = 4;
		key.addr[0] = ip->daddr;
		h = mix(h, ip->saddr);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return TCX_NEXT;
		l4 = (void *)(ip6 + 1);
		key.proto = ip6->nexthdr; // extension headers: left to nftables' random pick
		key.family = 6;
		key.addr[0] = ip6->daddr.in6_u.u6_addr32[0];
		key.addr[1] = ip6->daddr.in6_u.u6_addr32[1];
		key.addr[2] = ip6->daddr.in6_u.u6_addr32[2];
		key.addr[3] = ip6->daddr.in6_u.u6_addr32[3];
		h = mix(h, ip6->saddr.in6_u.u6_addr32[0]);
		h = mix(h, ip6->saddr.in6_u.u6_addr32[1]);
		h = mix(h, ip6->saddr.in6_u.u6_addr32[2]);
		h = mix(h, ip6->saddr.in6_u.u6_addr32[3]);
	} else {
		return TCX_NEXT;
	}
	if (key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP)
		return TCX_NEXT;
	if ((void *)(l4 + 1) > end)
		return TCX_NEXT;
	key.port = l4->dest;
	struct np_val *svc = bpf_map_lookup_elem(&np_services, &key); // a service address
	if (!svc) {
		key.addr[0] = key.addr[1] = key.addr[2] = key.addr[3] = 0; // a node port
		svc = bpf_map_lookup_elem(&np_services, &key);
	}
	if (!svc || svc->backends == 0)
		return TCX_NEXT;
	h = mix(h, ((__u32)l4->source << 16) | l4->dest);
	h = finish(mix(h, key.proto));

	void *table = bpf_map_lookup_elem(&np_maglev, &svc->id);
	if (!table)
		return TCX_NEXT;
	__u32 slot = h % MAGLEV_SIZE;
	__u32 *index = bpf_map_lookup_elem(table, &slot);
	if (!index || *index >= svc->backends)
		return TCX_NEXT;
	skb->mark = (skb->mark & ~(MARK_MAGLEV | MARK_INDEX)) | MARK_MAGLEV | *index;
	__u64 *n = bpf_map_lookup_elem(&np_stats, &svc->id);
	if (n)
		(*n)++;
	return TCX_NEXT;
}
