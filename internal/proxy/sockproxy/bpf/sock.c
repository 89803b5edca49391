// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// weft's socket-level service load balancer: cgroup sock_addr programs that point a pod's
// connect() or UDP sendmsg() to a service address at one of the service's endpoints, so
// no packet of the connection is ever NATed, and that show the application the service
// address again where it asks for its peer (getpeername, recvmsg).
//
// Only sockets in the network namespaces listed in `pod_netns` are touched: the programs
// sit on a cgroup shared with every other process of the host, and each weftd lists its
// own node's pods.

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define ECONNREFUSED 111

#define MAX_SERVICES 65536
#define MAX_BACKENDS (MAX_SERVICES * 8)
#define MAX_REVERSE 262144

// A service address: IPv4 as IPv4-mapped IPv6, so one map serves both families and an
// IPv6 socket connecting to a mapped IPv4 service is translated too.
struct svc_key {
	__u32 addr[4];
	__u16 port; // network byte order
	__u8 proto;
	__u8 pad;
};

#define SVC_AFFINITY 1

struct svc_val {
	__u32 id;      // index into backends and counters
	__u16 count;   // backends in slots 0..count-1; 0: refuse at once
	__u16 flags;   // SVC_AFFINITY
	__u32 timeout; // affinity, seconds
};

struct backend_key {
	__u32 id;
	__u32 slot;
};

struct addr_port {
	__u32 addr[4];
	__u16 port; // network byte order
	__u16 pad;
};

struct affinity_key {
	__u64 netns; // the client pod
	__u32 id;
	__u32 pad;
};

struct affinity_val {
	struct addr_port backend;
	__u64 last; // ns
};

struct reverse_key {
	__u64 sock;
	struct addr_port backend;
	__u32 pad; // explicit: a hash key's every byte counts
};

// A UDP flow of an unconnected socket: its datagrams to one service address stay with one
// backend while that backend lasts, as conntrack would keep them.
struct flow_key {
	__u64 sock;
	struct addr_port svc;
	__u32 pad;
};

struct counters {
	__u64 translated;
	__u64 refused;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} pod_netns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, struct backend_key);
	__type(value, struct addr_port);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_REVERSE);
	__type(key, struct affinity_key);
	__type(value, struct affinity_val);
} affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_REVERSE);
	__type(key, struct reverse_key);
	__type(value, struct addr_port);
} reverse SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_REVERSE);
	__type(key, struct flow_key);
	__type(value, struct affinity_val);
} udp_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct counters);
} stats SEC(".maps");

static __always_inline int in_pod(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_netns_cookie(ctx);
	return bpf_map_lookup_elem(&pod_netns, &cookie) != NULL;
}

static __always_inline void read_addr(struct bpf_sock_addr *ctx, int v6, struct addr_port *a)
{
	if (v6) {
		a->addr[0] = ctx->user_ip6[0];
		a->addr[1] = ctx->user_ip6[1];
		a->addr[2] = ctx->user_ip6[2];
		a->addr[3] = ctx->user_ip6[3];
	} else {
		a->addr[0] = 0;
		a->addr[1] = 0;
		a->addr[2] = bpf_htonl(0xffff);
		a->addr[3] = ctx->user_ip4;
	}
	a->port = (__u16)ctx->user_port;
	a->pad = 0;
}

// write_addr puts a where the socket will go (or where the application will see its
// peer). An IPv4 hook only ever carries IPv4 addresses.
static __always_inline void write_addr(struct bpf_sock_addr *ctx, int v6, const struct addr_port *a)
{
	if (v6) {
		ctx->user_ip6[0] = a->addr[0];
		ctx->user_ip6[1] = a->addr[1];
		ctx->user_ip6[2] = a->addr[2];
		ctx->user_ip6[3] = a->addr[3];
	} else {
		ctx->user_ip4 = a->addr[3];
	}
	ctx->user_port = a->port;
}

static __always_inline int same_addr(const struct addr_port *a, const struct addr_port *b)
{
	return a->addr[0] == b->addr[0] && a->addr[1] == b->addr[1] && a->addr[2] == b->addr[2] &&
	       a->addr[3] == b->addr[3] && a->port == b->port;
}

static __always_inline void count(__u32 id, int refused)
{
	struct counters *c = bpf_map_lookup_elem(&stats, &id);
	if (!c)
		return;
	if (refused)
		c->refused++;
	else
		c->translated++;
}

// still_there returns the backend that slot of service s holds if it is still want (a
// remembered choice stays valid only while its backend keeps its slot).
static __always_inline struct addr_port *still_there(const struct svc_val *s, const struct addr_port *want)
{
	struct backend_key bk = {.id = s->id, .slot = want->pad};
	if (bk.slot >= s->count)
		return NULL;
	struct addr_port *b = bpf_map_lookup_elem(&backends, &bk);
	if (b && same_addr(b, want))
		return b;
	return NULL;
}

// pick chooses the backend for a new connection (or a UDP datagram) of the client pod to
// service s: the one it had within the affinity timeout, or the one this socket's flow
// to the service had (flow, for unconnected UDP), while that backend is still there; else
// one at random.
static __always_inline struct addr_port *pick(const struct svc_val *s, __u64 netns, struct flow_key *flow)
{
	struct affinity_key ak = {.netns = netns, .id = s->id};
	struct affinity_val *av = NULL;
	struct addr_port *b;
	__u64 now = 0;

	if (s->flags & SVC_AFFINITY) {
		now = bpf_ktime_get_ns();
		av = bpf_map_lookup_elem(&affinity, &ak);
		if (av && now - av->last <= (__u64)s->timeout * 1000000000ULL) {
			b = still_there(s, &av->backend);
			if (b) {
				av->last = now;
				return b;
			}
		}
	} else if (flow) {
		av = bpf_map_lookup_elem(&udp_flows, flow);
		if (av) {
			b = still_there(s, &av->backend);
			if (b)
				return b;
		}
	}
	struct backend_key bk = {.id = s->id, .slot = bpf_get_prandom_u32() % s->count};
	b = bpf_map_lookup_elem(&backends, &bk);
	if (!b)
		return NULL;
	struct affinity_val nv = {.backend = *b, .last = now};
	nv.backend.pad = (__u16)bk.slot;
	if (s->flags & SVC_AFFINITY)
		bpf_map_update_elem(&affinity, &ak, &nv, BPF_ANY);
	else if (flow)
		bpf_map_update_elem(&udp_flows, flow, &nv, BPF_ANY);
	return b;
}

// translate points the socket (connect) or the datagram (sendmsg) at a backend if it is
// going to a service, and records backend → service for the socket (getpeername,
// recvmsg). When the service has no endpoint the call fails at once with ECONNREFUSED, as
// with the nftables proxy's reject, instead of timing out. A connected UDP socket is left to the nftables proxy: its flow
// to a removed endpoint must move to a live one, which conntrack does and a socket pinned
// at connect time cannot.
static __always_inline int translate(struct bpf_sock_addr *ctx, int v6, int datagram)
{
	if (!datagram && ctx->protocol != IPPROTO_TCP)
		return 1;
	if (!in_pod(ctx))
		return 1;
	struct svc_key k = {};
	struct addr_port dst;
	read_addr(ctx, v6, &dst);
	__builtin_memcpy(k.addr, dst.addr, sizeof(k.addr));
	k.port = dst.port;
	k.proto = (__u8)ctx->protocol;
	struct svc_val *s = bpf_map_lookup_elem(&services, &k);
	if (!s)
		return 1;
	if (s->count == 0) {
		count(s->id, 1);
		bpf_set_retval(-ECONNREFUSED); // as the nftables proxy's reject: refused, at once
		return 0;
	}
	struct flow_key fk;
	if (datagram) {
		__builtin_memset(&fk, 0, sizeof(fk));
		fk.sock = bpf_get_socket_cookie(ctx);
		fk.svc = dst;
		fk.svc.pad = 0;
	}
	struct addr_port *b = pick(s, bpf_get_netns_cookie(ctx), datagram ? &fk : NULL);
	if (!b)
		return 1; // mid-update: leave it to the nftables proxy
	struct reverse_key rk;
	__builtin_memset(&rk, 0, sizeof(rk));
	rk.sock = bpf_get_socket_cookie(ctx);
	rk.backend = *b;
	rk.backend.pad = 0;
	dst.pad = 0;
	bpf_map_update_elem(&reverse, &rk, &dst, BPF_ANY);
	write_addr(ctx, v6, b);
	count(s->id, 0);
	return 1;
}

// untranslate shows the application the service address in place of the backend it was
// pointed at.
static __always_inline int untranslate(struct bpf_sock_addr *ctx, int v6)
{
	if (!in_pod(ctx))
		return 1;
	struct reverse_key rk;
	__builtin_memset(&rk, 0, sizeof(rk));
	rk.sock = bpf_get_socket_cookie(ctx);
	read_addr(ctx, v6, &rk.backend);
	struct addr_port *svc = bpf_map_lookup_elem(&reverse, &rk);
	if (svc)
		write_addr(ctx, v6, svc);
	return 1;
}

SEC("cgroup/connect4")
int weft_connect4(struct bpf_sock_addr *ctx) { return translate(ctx, 0, 0); }

SEC("cgroup/connect6")
int weft_connect6(struct bpf_sock_addr *ctx) { return translate(ctx, 1, 0); }

SEC("cgroup/sendmsg4")
int weft_sendmsg4(struct bpf_sock_addr *ctx) { return translate(ctx, 0, 1); }

SEC("cgroup/sendmsg6")
int weft_sendmsg6(struct bpf_sock_addr *ctx) { return translate(ctx, 1, 1); }

SEC("cgroup/recvmsg4")
int weft_recvmsg4(struct bpf_sock_addr *ctx) { return untranslate(ctx, 0); }

SEC("cgroup/recvmsg6")
int weft_recvmsg6(struct bpf_sock_addr *ctx) { return untranslate(ctx, 1); }

SEC("cgroup/getpeername4")
int weft_getpeername4(struct bpf_sock_addr *ctx) { return untranslate(ctx, 0); }

SEC("cgroup/getpeername6")
int weft_getpeername6(struct bpf_sock_addr *ctx) { return untranslate(ctx, 1); }
