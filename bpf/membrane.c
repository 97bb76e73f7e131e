//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Membrane's per-endpoint datapath. One object serves every endpoint: the
 * programs find the endpoint from the interface they run on (the endpoints
 * map), and its policy through the policy map of maps.
 *
 *   from_container: TCX ingress of the host-side veth, sees what leaves the
 *                   endpoint, enforces its egress policy.
 *   to_container:   TCX egress of the host-side veth, sees what enters the
 *                   endpoint, enforces its ingress policy.
 */
#include "common.h"

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>

/* From <linux/icmp.h>, which drags in libc headers. */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_SOURCE_QUENCH 4
#define ICMP_REDIRECT 5
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

char __license[] SEC("license") = "Dual BSD/GPL";

/* ---- maps ------------------------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 512 * 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* ifindex of the host-side veth */
	__type(value, struct endpoint_info);
	__uint(max_entries, 65536);
} endpoints SEC(".maps");

/* The same entries for interfaces with a small ifindex (nearly all): an
 * array lookup instead of a hash one on every packet. An entry with
 * ep_id 0 is empty. */
#define EP_ARRAY_SIZE 65536
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(max_entries, EP_ARRAY_SIZE);
} endpoints_by_index SEC(".maps");

static __always_inline struct endpoint_info *lookup_endpoint(__u32 ifindex)
{
	struct endpoint_info *ep;

	if (ifindex < EP_ARRAY_SIZE) {
		ep = bpf_map_lookup_elem(&endpoints_by_index, &ifindex);
		if (ep && ep->ep_id)
			return ep;
	}
	return bpf_map_lookup_elem(&endpoints, &ifindex);
}

/* Every endpoint's policy, keyed by endpoint id first. One map, so that
 * adding an endpoint costs no map-in-map update (an RCU grace period);
 * the agent enforces each endpoint's share of the capacity. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 256 * 1024);
} ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_ports);
	__uint(max_entries, 8192);
} frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct dp_config);
	__uint(max_entries, 1);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32); /* dir * COUNTER_MAX + reason; reason 0 counts forwarded */
	__type(value, __u64);
	__uint(max_entries, 2 * COUNTER_MAX);
} metrics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

/* Referenced so that bpf2go generates the Go mirror of the event. */
const struct event *unused_event __attribute__((unused));

/* ---- packet parsing --------------------------------------------------- */

#define CT_LIFETIME_TCP (21600ULL * 1000000000ULL)
#define CT_LIFETIME_TCP_SYN (60ULL * 1000000000ULL)
#define CT_LIFETIME_CLOSING (10ULL * 1000000000ULL)
#define CT_LIFETIME_OTHER (60ULL * 1000000000ULL)
#define CT_REFRESH_NS (1000000000ULL)

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

struct flow {
	__u32 saddr; /* network byte order */
	__u32 daddr;
	__u16 sport; /* host byte order */
	__u16 dport;
	__u16 policy_port; /* port looked up in policy: dport, ICMP type */
	__u8 protocol;
	__u8 tcp_flags;
	__u8 icmp_error; /* the inner tuple below is set */
	__u8 pad[3];
	/* ICMP errors: the packet the error is about */
	__u32 in_saddr;
	__u32 in_daddr;
	__u16 in_sport;
	__u16 in_dport;
	__u8 in_protocol;
	__u32 len;
};

struct l4_ports {
	__u16 sport;
	__u16 dport;
};

/* Copies len bytes at off: straight from the packet when they are in its
 * linear part (the common case), else with bpf_skb_load_bytes. */
static __always_inline int load(struct __sk_buff *skb, __u32 off, void *to, const __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (off < 128 && data + off + len <= end) {
		__builtin_memcpy(to, data + off, len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

static __always_inline int is_icmp_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_SOURCE_QUENCH ||
	       type == ICMP_REDIRECT || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB;
}

/* Ports of a TCP/UDP header or ICMP echo at off; ICMP echo requests carry
 * their id as the source port, replies as the destination port, so that a
 * reply is the reverse tuple of its request. */
static __always_inline int load_ports(struct __sk_buff *skb, __u32 off, __u8 proto,
				      struct l4_ports *p)
{
	__u8 icmp[8];

	p->sport = 0;
	p->dport = 0;
	switch (proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		if (load(skb, off, p, sizeof(*p)) < 0)
			return REASON_MALFORMED;
		p->sport = bpf_ntohs(p->sport);
		p->dport = bpf_ntohs(p->dport);
		return 0;
	case IPPROTO_ICMP:
		if (load(skb, off, icmp, sizeof(icmp)) < 0)
			return REASON_MALFORMED;
		if (icmp[0] == ICMP_ECHO)
			p->sport = ((__u16)icmp[4] << 8) | icmp[5];
		else if (icmp[0] == ICMP_ECHOREPLY)
			p->dport = ((__u16)icmp[4] << 8) | icmp[5];
		return 0;
	}
	return 0;
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct flow *f)
{
	struct iphdr iph;
	__u32 l4off, frag;
	struct l4_ports ports = {};

	if (load(skb, ETH_HLEN, &iph, sizeof(iph)) < 0)
		return REASON_MALFORMED;
	if (iph.version != 4 || iph.ihl < 5)
		return REASON_MALFORMED;
	if (bpf_ntohs(iph.tot_len) < iph.ihl * 4 ||
	    bpf_ntohs(iph.tot_len) > skb->len - ETH_HLEN)
		return REASON_MALFORMED;

	f->saddr = iph.saddr;
	f->daddr = iph.daddr;
	f->protocol = iph.protocol;
	f->len = skb->len;
	l4off = ETH_HLEN + iph.ihl * 4;
	frag = bpf_ntohs(iph.frag_off);

	if (frag & IP_OFFSET) {
		/* A later fragment: no L4 header, take the first's ports. */
		struct frag_key fk = {.saddr = iph.saddr, .daddr = iph.daddr,
				      .id = iph.id, .protocol = iph.protocol};
		struct frag_ports *fp = bpf_map_lookup_elem(&frags, &fk);

		if (!fp)
			return REASON_FRAG_NOT_FOUND;
		f->sport = fp->sport;
		f->dport = fp->dport;
		f->policy_port = f->dport;
		return 0;
	}

	switch (iph.protocol) {
	case IPPROTO_TCP: {
		__u8 hdr[14];

		if (bpf_ntohs(iph.tot_len) < iph.ihl * 4 + 20)
			return REASON_MALFORMED;
		if (load(skb, l4off, hdr, sizeof(hdr)) < 0)
			return REASON_MALFORMED;
		if ((hdr[12] >> 4) < 5)
			return REASON_MALFORMED;
		f->sport = ((__u16)hdr[0] << 8) | hdr[1];
		f->dport = ((__u16)hdr[2] << 8) | hdr[3];
		f->tcp_flags = hdr[13];
		f->policy_port = f->dport;
		break;
	}
	case IPPROTO_UDP:
		if (bpf_ntohs(iph.tot_len) < iph.ihl * 4 + 8)
			return REASON_MALFORMED;
		if (load_ports(skb, l4off, IPPROTO_UDP, &ports))
			return REASON_MALFORMED;
		f->sport = ports.sport;
		f->dport = ports.dport;
		f->policy_port = f->dport;
		break;
	case IPPROTO_ICMP: {
		__u8 type;

		if (bpf_ntohs(iph.tot_len) < iph.ihl * 4 + 8)
			return REASON_MALFORMED;
		if (load(skb, l4off, &type, 1) < 0)
			return REASON_MALFORMED;
		if (load_ports(skb, l4off, IPPROTO_ICMP, &ports))
			return REASON_MALFORMED;
		f->sport = ports.sport;
		f->dport = ports.dport;
		f->policy_port = type;
		if (is_icmp_error(type)) {
			struct iphdr in;
			struct l4_ports ip = {};

			/* The header of the packet the error is about. */
			if (bpf_skb_load_bytes(skb, l4off + 8, &in, sizeof(in)) == 0 &&
			    in.version == 4 && in.ihl >= 5 &&
			    load_ports(skb, l4off + 8 + in.ihl * 4, in.protocol, &ip) == 0) {
				f->icmp_error = 1;
				f->in_saddr = in.saddr;
				f->in_daddr = in.daddr;
				f->in_protocol = in.protocol;
				f->in_sport = ip.sport;
				f->in_dport = ip.dport;
			}
		}
		break;
	}
	default:
		/* Other protocols have no ports: only any-port rules match. */
		break;
	}

	if (frag & IP_MF) {
		struct frag_key fk = {.saddr = iph.saddr, .daddr = iph.daddr,
				      .id = iph.id, .protocol = iph.protocol};
		struct frag_ports fp = {.sport = f->sport, .dport = f->dport};

		bpf_map_update_elem(&frags, &fk, &fp, BPF_ANY);
	}
	return 0;
}

/* ---- events and counters ---------------------------------------------- */

static __always_inline void count(__u8 dir, __u8 reason)
{
	__u32 idx = (__u32)dir * COUNTER_MAX + reason;
	__u64 *c = bpf_map_lookup_elem(&metrics, &idx);

	if (c)
		*c += 1;
}

static __always_inline struct dp_config *get_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&config, &zero);
}

static __always_inline int verdict_events_enabled(void)
{
	struct dp_config *cfg = get_config();

	return cfg && (cfg->flags & CFG_F_VERDICT_EVENTS);
}

struct decision {
	__u32 peer_identity;
	__u32 cookie;
	__u16 proxy_port;
	__u8 verdict;
	__u8 reason;
	__u8 match;
	__u8 ct_flags;
};

static __always_inline void emit(struct __sk_buff *skb, const struct endpoint_info *ep,
				 const struct flow *f, __u8 dir, __u8 type,
				 const struct decision *d)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->ep_id = ep ? ep->ep_id : 0;
	e->ifindex = skb->ifindex;
	if (dir == DIR_EGRESS) {
		e->src_identity = ep ? ep->identity : 0;
		e->dst_identity = d->peer_identity;
	} else {
		e->src_identity = d->peer_identity;
		e->dst_identity = ep ? ep->identity : 0;
	}
	e->cookie = d->cookie;
	e->pkt_len = skb->len;
	__builtin_memcpy(e->saddr, &f->saddr, 4);
	__builtin_memcpy(e->daddr, &f->daddr, 4);
	e->sport = f->sport;
	e->dport = f->protocol == IPPROTO_ICMP ? f->policy_port : f->dport;
	e->proxy_port = d->proxy_port;
	e->type = type;
	e->verdict = d->verdict;
	e->reason = d->reason;
	e->dir = dir;
	e->family = FAMILY_IPV4;
	e->protocol = f->protocol;
	e->match = d->match;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int drop(struct __sk_buff *skb, const struct endpoint_info *ep,
				const struct flow *f, __u8 dir, struct decision *d)
{
	d->verdict = VERDICT_DROPPED;
	count(dir, d->reason);
	emit(skb, ep, f, dir, EVENT_DROP, d);
	return TC_ACT_SHOT;
}

/* ---- conntrack -------------------------------------------------------- */

enum ct_state {
	CT_NEW = 0,
	CT_ESTABLISHED,
	CT_REPLY,
	CT_RELATED,
};

static __always_inline void ct_fill_key(struct ct_key *k, __u32 saddr, __u32 daddr,
					__u16 sport, __u16 dport, __u8 proto, __u8 dir)
{
	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->saddr, &saddr, 4);
	__builtin_memcpy(k->daddr, &daddr, 4);
	k->sport = sport;
	k->dport = dport;
	k->protocol = proto;
	k->family = FAMILY_IPV4;
	k->dir = dir;
}

static __always_inline __u64 ct_lifetime(const struct flow *f, __u8 closing)
{
	if (closing)
		return CT_LIFETIME_CLOSING;
	if (f->protocol == IPPROTO_TCP) {
		if ((f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			return CT_LIFETIME_TCP_SYN;
		return CT_LIFETIME_TCP;
	}
	return CT_LIFETIME_OTHER;
}

/* Refreshes an entry seen again: lifetime at most once a second (a write per
 * packet would bounce the entry's cache line between CPUs), closing on FIN
 * or RST. */
static __always_inline void ct_touch(struct ct_entry *e, const struct flow *f, __u64 now,
				     __u8 reply)
{
	__u8 closing = e->flags & CT_F_CLOSING;
	__u8 flags = e->flags;

	if (f->protocol == IPPROTO_TCP && (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)))
		closing = CT_F_CLOSING;
	flags |= closing;
	if (reply)
		flags |= CT_F_SEEN_REPLY;
	if (flags != e->flags)
		e->flags = flags;
	if (closing) {
		if (e->expires_ns > now + CT_LIFETIME_CLOSING)
			e->expires_ns = now + CT_LIFETIME_CLOSING;
		return;
	}
	if (now + ct_lifetime(f, 0) > e->expires_ns + CT_REFRESH_NS)
		e->expires_ns = now + ct_lifetime(f, 0);
}

static __always_inline enum ct_state ct_lookup(const struct flow *f, __u8 dir, __u64 now,
					       struct decision *d)
{
	struct ct_key k;
	struct ct_entry *e;
	__u8 other = dir == DIR_EGRESS ? DIR_INGRESS : DIR_EGRESS;

	if (f->icmp_error) {
		/* An error about a packet that went the other way through this
		 * same hook pair: look for that packet's connection. */
		ct_fill_key(&k, f->in_saddr, f->in_daddr, f->in_sport, f->in_dport,
			    f->in_protocol, other);
		e = bpf_map_lookup_elem(&ct, &k);
		if (e && e->expires_ns > now) {
			d->peer_identity = e->peer_identity;
			d->match = MATCH_CT_RELATED;
			return CT_RELATED;
		}
		return CT_NEW;
	}

	ct_fill_key(&k, f->saddr, f->daddr, f->sport, f->dport, f->protocol, dir);
	e = bpf_map_lookup_elem(&ct, &k);
	if (e && e->expires_ns > now) {
		__u8 syn = f->protocol == IPPROTO_TCP &&
			   (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;

		if (e->flags & CT_F_REPLY) {
			/* The reply entry of a connection: one lookup finds it. A
			 * new connection the other way round is checked. */
			if (!syn) {
				ct_touch(e, f, now, 1);
				d->peer_identity = e->peer_identity;
				d->cookie = e->cookie;
				d->proxy_port = e->proxy_port;
				d->ct_flags = e->flags;
				d->match = MATCH_CT_REPLY;
				return CT_REPLY;
			}
		} else if (!syn || (e->flags & CT_F_CLOSING) == 0) {
			/* A new TCP connection on a known tuple is checked again. */
			ct_touch(e, f, now, 0);
			d->peer_identity = e->peer_identity;
			d->cookie = e->cookie;
			d->proxy_port = e->proxy_port;
			d->ct_flags = e->flags;
			d->match = MATCH_CT;
			return CT_ESTABLISHED;
		}
	}

	/* Connections tracked without a reply entry (made by an older
	 * datapath, or whose reply entry was evicted). */
	ct_fill_key(&k, f->daddr, f->saddr, f->dport, f->sport, f->protocol, other);
	e = bpf_map_lookup_elem(&ct, &k);
	if (e && e->expires_ns > now && !(e->flags & CT_F_REPLY)) {
		ct_touch(e, f, now, 1);
		d->peer_identity = e->peer_identity;
		d->cookie = e->cookie;
		d->proxy_port = e->proxy_port;
		d->ct_flags = e->flags;
		d->match = MATCH_CT_REPLY;
		return CT_REPLY;
	}
	return CT_NEW;
}

/* Tracks a new connection: its entry, and the entry of its reverse tuple
 * at the other hook, so that each packet, either way, needs one lookup. */
static __always_inline void ct_create(const struct flow *f, __u8 dir, __u64 now,
				      const struct endpoint_info *ep, const struct decision *d,
				      __u8 flags)
{
	struct ct_key k;
	struct ct_entry e = {};
	__u8 other = dir == DIR_EGRESS ? DIR_INGRESS : DIR_EGRESS;

	ct_fill_key(&k, f->saddr, f->daddr, f->sport, f->dport, f->protocol, dir);
	e.created_ns = now;
	e.expires_ns = now + ct_lifetime(f, 0);
	e.ep_id = ep->ep_id;
	e.peer_identity = d->peer_identity;
	e.cookie = d->cookie;
	e.proxy_port = d->proxy_port;
	e.flags = flags;
	bpf_map_update_elem(&ct, &k, &e, BPF_ANY);

	ct_fill_key(&k, f->daddr, f->saddr, f->dport, f->sport, f->protocol, other);
	e.flags = flags | CT_F_REPLY;
	e.proxy_port = 0;
	bpf_map_update_elem(&ct, &k, &e, BPF_ANY);
}

/* ---- policy ----------------------------------------------------------- */

static __always_inline struct policy_entry *policy_lpm(__u32 ep_id, __u32 identity, __u8 dir,
						       __u8 proto, __u16 port)
{
	struct policy_key k = {
		.prefixlen = POLICY_FULL_PREFIX,
		.ep_id = ep_id,
		.identity = identity,
		.egress = dir,
		.protocol = proto,
		.dport = bpf_htons(port),
	};

	return bpf_map_lookup_elem(&policy, &k);
}

/*
 * Policy lookup precedence, for a packet of protocol P to port D (ICMP: the
 * type) from (ingress) or to (egress) a peer address A.
 *
 * The ipcache gives A's security identity S and, when a policy names a CIDR
 * holding A, the identity C of the most specific such CIDR. The endpoint's
 * policy is an LPM trie keyed by (identity, direction, protocol, port): for
 * one identity it returns the most specific entry, in this order:
 *     exact port of P  >  port range of P  >  any port of P  >  any protocol.
 * Three lookups are made:
 *     (a) identity S
 *     (b) identity 0, the any-identity wildcard
 *     (c) identity C, or C + CIDR_IN_CLUSTER_OFFSET when A is an endpoint or
 *         the host (entries only Kubernetes ipBlock peers install)
 * and decided as follows:
 *  1. a deny entry from any lookup drops the packet: deny beats allow,
 *     whatever allowed it (user space also turns allow entries covered by a
 *     broader deny of the same identity into denies, so (a)-(c) are exact);
 *  2. otherwise an allow entry from any lookup allows it; the most specific
 *     one (longest prefix) decides the L7 redirect, on a tie (a) beats (c)
 *     beats (b);
 *  3. otherwise no entry: default deny. A direction in which no rule selects
 *     the endpoint holds an any-identity, any-protocol allow entry.
 * Each lookup is O(key length); nothing here depends on the number of rules.
 */
static __always_inline int policy_decide(__u32 ep_id, __u32 sec, const struct ipcache_value *ipc,
					 __u8 dir, const struct flow *f, struct decision *d)
{
	struct policy_entry *best = 0, *e;
	__u8 best_match = MATCH_NONE;

	e = policy_lpm(ep_id, sec, dir, f->protocol, f->policy_port);
	if (e) {
		if (e->flags & POLICY_F_DENY)
			goto deny;
		best = e;
		best_match = MATCH_IDENTITY;
	}
	if (ipc && ipc->cidr_identity) {
		__u32 cid = ipc->cidr_identity;

		if (ipc->flags & IPCACHE_F_CLUSTER)
			cid += CIDR_IN_CLUSTER_OFFSET;
		e = policy_lpm(ep_id, cid, dir, f->protocol, f->policy_port);
		if (e) {
			if (e->flags & POLICY_F_DENY)
				goto deny;
			if (!best || e->prefixlen > best->prefixlen) {
				best = e;
				best_match = MATCH_CIDR;
			}
		}
	}
	e = policy_lpm(ep_id, IDENTITY_ANY, dir, f->protocol, f->policy_port);
	if (e) {
		if (e->flags & POLICY_F_DENY)
			goto deny;
		if (!best || e->prefixlen > best->prefixlen) {
			best = e;
			best_match = MATCH_ANY;
		}
	}
	if (!best) {
		d->reason = REASON_POLICY_NO_ENTRY;
		return 0;
	}
	d->cookie = best->cookie;
	d->proxy_port = best->proxy_port;
	d->match = best_match;
	return 1;
deny:
	d->cookie = e->cookie;
	d->reason = REASON_POLICY_DENIED;
	return 0;
}

static __always_inline struct ipcache_value *ipcache_lookup(__u32 addr)
{
	struct ipcache_key k = {.prefixlen = 32 + 32, .family = FAMILY_IPV4};

	__builtin_memcpy(k.addr, &addr, 4);
	return bpf_map_lookup_elem(&ipcache, &k);
}

/* ---- L7 redirect ------------------------------------------------------- */

/* Hands a TCP packet to a local socket, TPROXY-style (notes: l7-redirect):
 * the connection's own socket once the host has one (request or
 * established), else the proxy's transparent listener on port. The mark
 * makes policy routing deliver it locally. Only possible at TCX ingress. */
static __always_inline int assign_to_proxy(struct __sk_buff *skb, const struct flow *f, __u16 port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	long ret;

	t.ipv4.saddr = f->saddr;
	t.ipv4.daddr = f->daddr;
	t.ipv4.sport = bpf_htons(f->sport);
	t.ipv4.dport = bpf_htons(f->dport);
	sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		if (sk->state != BPF_TCP_LISTEN && sk->state != BPF_TCP_TIME_WAIT) {
			ret = bpf_sk_assign(skb, sk, 0);
			bpf_sk_release(sk);
			goto assigned;
		}
		bpf_sk_release(sk);
	}
	if (!port)
		return REASON_PROXY_NOT_FOUND;
	t.ipv4.daddr = 0;
	t.ipv4.dport = bpf_htons(port);
	sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return REASON_PROXY_NOT_FOUND;
	ret = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
assigned:
	if (ret)
		return REASON_PROXY_ASSIGN;
	skb->mark = MARK_TO_PROXY | ((__u32)port << 16);
	return 0;
}

/* Is the proxy listening on port? (a lookup works at TCX egress too) */
static __always_inline int proxy_listening(struct __sk_buff *skb, const struct flow *f, __u16 port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;

	t.ipv4.saddr = f->saddr;
	t.ipv4.sport = bpf_htons(f->sport);
	t.ipv4.dport = bpf_htons(port);
	sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* Ingress L7: sk_assign is refused at TCX egress, so the frame goes to
 * the ingress of the host device, whose program assigns it. */
static __always_inline int hairpin_to_proxy(struct __sk_buff *skb, const struct flow *f, __u16 port)
{
	struct dp_config *cfg = get_config();

	if (!cfg || !cfg->host_ifindex || !proxy_listening(skb, f, port))
		return -REASON_PROXY_NOT_FOUND;
	if (bpf_skb_store_bytes(skb, 0, cfg->host_mac, 6, 0) < 0)
		return -REASON_PROXY_ASSIGN;
	skb->mark = MARK_TO_PROXY | ((__u32)port << 16);
	return bpf_redirect(cfg->host_ifindex, BPF_F_INGRESS);
}

/* Sends a packet of a redirected flow to the proxy: from the endpoint
 * (TCX ingress) by socket assignment, into the endpoint (TCX egress) by
 * the hairpin. */
static __always_inline int to_proxy(struct __sk_buff *skb, const struct endpoint_info *ep,
				    const struct flow *f, __u8 dir, struct decision *d)
{
	int ret;

	if (dir == DIR_EGRESS) {
		ret = assign_to_proxy(skb, f, d->proxy_port);
		if (ret) {
			d->reason = ret;
			return drop(skb, ep, f, dir, d);
		}
		count(dir, REASON_NONE);
		return TC_ACT_OK;
	}
	ret = hairpin_to_proxy(skb, f, d->proxy_port);
	if (ret < 0) {
		d->reason = -ret;
		return drop(skb, ep, f, dir, d);
	}
	count(dir, REASON_NONE);
	return ret;
}

/* Replies to a connection the proxy opened upstream go to its socket. */
static __always_inline void steer_to_upstream(struct __sk_buff *skb, const struct flow *f)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;

	t.ipv4.saddr = f->saddr;
	t.ipv4.daddr = f->daddr;
	t.ipv4.sport = bpf_htons(f->sport);
	t.ipv4.dport = bpf_htons(f->dport);
	sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return;
	if (sk->state != BPF_TCP_LISTEN && sk->state != BPF_TCP_TIME_WAIT) {
		bpf_sk_assign(skb, sk, 0);
		skb->mark = MARK_TO_PROXY;
	}
	bpf_sk_release(sk);
}

/* An ingress redirect also tells the client endpoint's egress entry of the
 * same connection, so that its later packets go straight to the proxy's
 * socket instead of to the host's forwarding path. */
static __always_inline void mark_egress_redirect(const struct flow *f, __u16 port)
{
	struct ct_key k;
	struct ct_entry *e;

	ct_fill_key(&k, f->saddr, f->daddr, f->sport, f->dport, f->protocol, DIR_EGRESS);
	e = bpf_map_lookup_elem(&ct, &k);
	if (e && e->proxy_port != port)
		e->proxy_port = port;
}

/* ---- the hook --------------------------------------------------------- */

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint_info *ep;
	struct flow f = {};
	struct decision d = {};
	struct ipcache_value *ipc;
	__u64 now;
	__u16 proto;
	__u32 peer;
	__u32 audit;
	int reason, from_proxy;

	ep = lookup_endpoint(ifindex);
	if (!ep) {
		d.reason = REASON_UNKNOWN_ENDPOINT;
		return drop(skb, 0, &f, dir, &d);
	}

	if (load(skb, 12, &proto, sizeof(proto)) < 0) {
		d.reason = REASON_MALFORMED;
		return drop(skb, ep, &f, dir, &d);
	}
	if (proto == bpf_htons(ETH_P_ARP)) {
		count(dir, REASON_NONE);
		return TC_ACT_OK;
	}
	if (proto != bpf_htons(ETH_P_IP)) {
		d.reason = REASON_UNSUPPORTED_L3;
		return drop(skb, ep, &f, dir, &d);
	}

	reason = parse_ipv4(skb, &f);
	if (reason) {
		d.reason = reason;
		return drop(skb, ep, &f, dir, &d);
	}
	if (dir == DIR_EGRESS && __builtin_memcmp(&f.saddr, ep->ipv4, 4) != 0) {
		d.reason = REASON_SPOOFED_SOURCE;
		return drop(skb, ep, &f, dir, &d);
	}

	/* Lifetimes are seconds: the coarse clock (same origin, one tick of
	 * resolution) is half the price of bpf_ktime_get_ns. */
	now = bpf_ktime_get_coarse_ns();
	from_proxy = dir == DIR_INGRESS && (skb->mark & MARK_MASK) == MARK_FROM_PROXY;
	switch (ct_lookup(&f, dir, now, &d)) {
	case CT_ESTABLISHED:
		if (d.proxy_port && f.protocol == IPPROTO_TCP && !from_proxy)
			return to_proxy(skb, ep, &f, dir, &d);
		count(dir, REASON_NONE);
		return TC_ACT_OK;
	case CT_REPLY:
		if ((d.ct_flags & CT_F_PROXY_UPSTREAM) && dir == DIR_EGRESS)
			steer_to_upstream(skb, &f);
		count(dir, REASON_NONE);
		return TC_ACT_OK;
	case CT_RELATED:
		count(dir, REASON_NONE);
		return TC_ACT_OK;
	default:
		break;
	}

	peer = dir == DIR_EGRESS ? f.daddr : f.saddr;
	ipc = ipcache_lookup(peer);
	d.peer_identity = ipc ? ipc->identity : IDENTITY_WORLD;

	if (policy_decide(ep->ep_id, d.peer_identity, ipc, dir, &f, &d)) {
		if (f.protocol != IPPROTO_TCP)
			d.proxy_port = 0; /* the proxy speaks TCP only */
		if (from_proxy) {
			/* The proxy opened this connection after checking L7 (both
			 * sides' rules); L3/L4 still applies. */
			d.proxy_port = 0;
			d.verdict = VERDICT_FORWARDED;
			ct_create(&f, dir, now, ep, &d, CT_F_PROXY_UPSTREAM);
			count(dir, REASON_NONE);
			return TC_ACT_OK;
		}
		d.verdict = d.proxy_port ? VERDICT_REDIRECTED : VERDICT_FORWARDED;
		ct_create(&f, dir, now, ep, &d, 0);
		if (verdict_events_enabled())
			emit(skb, ep, &f, dir, EVENT_POLICY_VERDICT, &d);
		if (d.proxy_port) {
			if (dir == DIR_INGRESS)
				mark_egress_redirect(&f, d.proxy_port);
			return to_proxy(skb, ep, &f, dir, &d);
		}
		count(dir, REASON_NONE);
		return TC_ACT_OK;
	}

	audit = dir == DIR_EGRESS ? EP_F_AUDIT_EGRESS : EP_F_AUDIT_INGRESS;
	if (ep->flags & audit) {
		/* Audit mode: the would-be drop passes and is reported. */
		d.verdict = VERDICT_AUDIT;
		ct_create(&f, dir, now, ep, &d, CT_F_AUDIT);
		emit(skb, ep, &f, dir, EVENT_POLICY_VERDICT, &d);
		count(dir, REASON_NONE);
		return TC_ACT_OK;
	}
	if (verdict_events_enabled()) {
		d.verdict = VERDICT_DROPPED;
		emit(skb, ep, &f, dir, EVENT_POLICY_VERDICT, &d);
	}
	return drop(skb, ep, &f, dir, &d);
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}

/* TCX ingress of the host device: frames hairpinned by to_container for an
 * ingress L7 redirect, handed to the proxy's socket. Other traffic passes. */
SEC("tc")
int from_host_dev(struct __sk_buff *skb)
{
	struct flow f = {};
	struct decision d = {};
	__u16 proto;
	__u16 port;
	int reason;

	if ((skb->mark & MARK_MASK) != MARK_TO_PROXY)
		return TC_ACT_OK;
	port = skb->mark >> 16;
	if (bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)) < 0 || proto != bpf_htons(ETH_P_IP))
		return TC_ACT_SHOT;
	reason = parse_ipv4(skb, &f);
	if (reason || f.protocol != IPPROTO_TCP) {
		d.reason = reason ? reason : REASON_MALFORMED;
		return drop(skb, 0, &f, DIR_INGRESS, &d);
	}
	reason = assign_to_proxy(skb, &f, port);
	if (reason) {
		d.reason = reason;
		return drop(skb, 0, &f, DIR_INGRESS, &d);
	}
	return TC_ACT_OK;
}
