//go:build ignore

/* Interlock's data path: cgroup programs that steer the sockets of tagged
 * cgroups into interlockd's proxy and refuse every other way out.
 *
 * A task is tagged when its cgroup or one of its ancestors is in
 * tagged_cgroups; interlockd's own cgroup (and its descendants) never is.
 * Tagged TCP connects are redirected to the proxy (or denied or passed, per
 * the identity's rules); what the kernel knew at connect time is recorded by
 * socket cookie, and sockops re-keys it by the 4-tuple the proxy sees.
 * Tagged DNS (port 53 of any address, and the configured resolvers) goes
 * to interlockd whatever the rules say: TCP to the proxy, UDP to its DNS
 * proxy, recorded by socket cookie and re-keyed by the egress program. */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "interlock.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define AF_NETLINK 16
#define AF_PACKET 17
#define NETLINK_ROUTE 0
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOCK_RAW 3
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

/* Socket options that put IP options or IPv6 extension headers on a
 * socket's packets (linux/in.h, linux/in6.h). */
#define SOL_IP 0
#define SOL_IPV6 41
#define IP_OPTIONS 4
#define IP_RETOPTS 7
#define IPV6_2292HOPOPTS 3
#define IPV6_2292DSTOPTS 4
#define IPV6_2292RTHDR 5
#define IPV6_2292PKTOPTIONS 6
#define IPV6_HOPOPTS 54
#define IPV6_RTHDRDSTOPTS 55
#define IPV6_RTHDR 57
#define IPV6_DSTOPTS 59
/* The largest option value a sockopt program is given (PAGE_SIZE). */
#define SOCKOPT_PAGE 4096

/* IPv6 next-header values of the extension headers walked below. */
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_DEST 60
#define MAX_EXT_HEADERS 4

#define ALLOW 1
#define REFUSE 0
/* LSM programs (lsm/) return an errno instead: 0 lets the operation go on. */
#define EPERM 1
#define LSM_ALLOW 0
#define LSM_REFUSE (-EPERM)

/* Maps are pinned by name under the loader's pin directory, so tags, rules and
 * records survive a daemon restart. */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);   /* cgroup id */
	__type(value, __u32); /* identity */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tagged_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32); /* identity */
	__type(value, struct rule_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tcp_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32); /* identity */
	__type(value, struct rule_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} udp_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config_map SEC(".maps");

/* Redirected sockets by socket cookie: read by getpeername, re-keyed by
 * sockops, removed when the socket closes. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct origin);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sock_origins SEC(".maps");

/* Steered UDP DNS sockets by the tuple interlockd's DNS proxy sees a
 * datagram come from (local: the agent socket, remote: the DNS proxy; the
 * netns cookie is the agent's): the egress program writes it from the
 * socket's sock_origins record for every datagram, the DNS proxy reads it.
 * A socket keeps its entry until the LRU evicts it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tuple);
	__type(value, struct origin);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_origins SEC(".maps");

/* Redirected connections by the 4-tuple the proxy sees at accept. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tuple);
	__type(value, struct origin);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conn_origins SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct unix_path);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} denied_unix SEC(".maps");

/* Per identity, the addresses and ports its tasks may bind (listen on)
 * besides loopback; verdicts other than deny allow. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32); /* identity */
	__type(value, struct rule_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} listen_rules SEC(".maps");

/* Inbound connections a tagged listener let in, by the tuple sockops sees
 * once they are established (netns_cookie 0): the ingress program records
 * the SYN, sockops turns it into an accept event. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tuple);
	__type(value, struct origin);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pending_accepts SEC(".maps");

/* Identities whose unix connects and sends are limited to unix_allowed. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32); /* identity */
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} unix_allow_on SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct unix_allow_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} unix_allowed SEC(".maps");

/* When this CPU last reported an inbound packet it dropped: other hosts
 * decide how many arrive, so their events are limited (inbound_allowed). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} inbound_reported SEC(".maps");

/* At most one inbound drop event per CPU in this many nanoseconds. */
#define INBOUND_EVENT_GAP_NS 10000000ULL

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} deny_events SEC(".maps");

/* Force BTF for the types the loader generates with bpf2go -type. */
const struct deny_event *unused_deny_event __attribute__((unused));
const struct unix_allow_key *unused_unix_allow_key __attribute__((unused));
const enum verdict *unused_verdict __attribute__((unused));
const enum deny_reason *unused_deny_reason __attribute__((unused));

static __always_inline struct config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config_map, &zero);
}

/* tagged reports whether the current task runs in a tagged cgroup or below
 * one, and which identity: the deepest tagged ancestor names it. A task in
 * interlockd's own cgroup, or below it, is never tagged. */
static __always_inline int tagged(struct config *cfg, __u32 *identity)
{
	int found = 0;

	for (int level = 0; level < MAX_CGROUP_DEPTH; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			break;
		if (cfg && cfg->self_cgroup == id)
			return 0;
		__u32 *ident = bpf_map_lookup_elem(&tagged_cgroups, &id);
		if (ident) {
			*identity = *ident;
			found = 1;
		}
	}
	return found;
}

static __always_inline void fill_origin(struct origin *o, __u32 identity)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	o->pid = pid_tgid >> 32;
	o->uid = (__u32)uid_gid;
	o->gid = uid_gid >> 32;
	o->identity = identity;
	o->cgroup_id = bpf_get_current_cgroup_id();
	o->time_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

static __always_inline void set_v4mapped(struct addr *a, __u32 ip4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0xffff);
	a->w[3] = ip4;
}

static __always_inline int is_v4mapped(const struct addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0xffff);
}

static __always_inline int rule_matches(const struct rule *r, const struct addr *dst, __u16 port)
{
	for (int i = 0; i < 4; i++)
		if ((dst->w[i] & r->mask.w[i]) != r->addr.w[i])
			return 0;
	return port >= r->port_min && port <= r->port_max;
}

/* match returns the verdict of the first rule in set matching dst:port, or
 * -1 when none does. */
static __always_inline int match(const struct rule_set *set, const struct addr *dst, __u16 port)
{
	if (!set)
		return -1;
	for (int i = 0; i < MAX_RULES; i++) {
		if (i >= set->count)
			break;
		if (rule_matches(&set->rules[i], dst, port))
			return set->rules[i].verdict;
	}
	return -1;
}

static __always_inline void emit_deny(void *ctx, __u32 identity, const struct addr *dst, __u16 port,
				      __u32 family, __u32 reason, __u32 sock_type, __u32 protocol)
{
	struct deny_event *e = bpf_ringbuf_reserve(&deny_events, sizeof(*e), 0);
	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e));
	fill_origin(&e->origin, identity);
	if (dst)
		e->origin.dst = *dst;
	e->origin.dst_port = port;
	e->origin.family = family;
	e->origin.netns_cookie = bpf_get_netns_cookie(ctx);
	e->reason = reason;
	e->sock_type = sock_type;
	e->protocol = protocol;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int same_addr(const struct addr *a, const struct addr *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] && a->w[3] == b->w[3];
}

/* is_dns reports whether dst:port is DNS that interlockd decides: port 53
 * of any address, or a configured resolver's address and port. Rules never
 * see it, so no rule can open a direct path to a resolver. */
static __always_inline int is_dns(struct config *cfg, const struct addr *dst, __u16 port)
{
	if (port == DNS_PORT)
		return 1;
	if (!cfg)
		return 0;
	for (int i = 0; i < MAX_RESOLVERS; i++) {
		if (i >= cfg->resolver_count)
			break;
		struct resolver *r = &cfg->resolvers[i];
		if (r->port == port && same_addr(&r->addr, dst))
			return 1;
	}
	return 0;
}

/* udp_allowed reports whether an identity may send UDP to dst:port
 * directly: what its UDP rules allow. */
static __always_inline int udp_allowed(__u32 identity, const struct addr *dst, __u16 port)
{
	int v = match(bpf_map_lookup_elem(&udp_rules, &identity), dst, port);
	return v >= 0 && v != VERDICT_DENY;
}

/* tcp_verdict is the first matching TCP rule's verdict of an identity;
 * without a match, redirect. */
static __always_inline int tcp_verdict(__u32 identity, const struct addr *dst, __u16 port)
{
	int v = match(bpf_map_lookup_elem(&tcp_rules, &identity), dst, port);
	return v < 0 ? VERDICT_REDIRECT : v;
}

/* udp_verdict refuses tagged UDP that udp_allowed does not allow. */
static __always_inline int udp_verdict(struct bpf_sock_addr *ctx, struct config *cfg, __u32 identity,
				       const struct addr *dst, __u16 port)
{
	if (udp_allowed(identity, dst, port))
		return ALLOW;
	emit_deny(ctx, identity, dst, port, ctx->family, DENY_UDP, ctx->type, ctx->protocol);
	return REFUSE;
}

/* record_origin records what the kernel knows of a steered socket by its
 * cookie; 0 when the map refused it. at is the time read before the tag
 * lookup that found identity: interlockd takes an identity as current
 * without asking the tag table again when no untag ended after it. */
static __always_inline int record_origin(struct bpf_sock_addr *ctx, __u32 identity, __u64 at, const struct addr *dst,
					 __u16 port)
{
	struct origin o = {};
	fill_origin(&o, identity);
	o.time_ns = at;
	o.dst = *dst;
	o.dst_port = port;
	o.family = ctx->family;
	o.netns_cookie = bpf_get_netns_cookie(ctx);
	__u64 cookie = bpf_get_socket_cookie(ctx);
	return bpf_map_update_elem(&sock_origins, &cookie, &o, BPF_ANY) == 0;
}

/* dns_steer sends a tagged UDP DNS datagram (or connect) to interlockd's
 * DNS proxy of dst's family, recording the original resolver and the
 * caller by socket cookie. With no DNS proxy for the family, or no record,
 * it refuses: DNS never goes out directly. */
static __always_inline int dns_steer(struct bpf_sock_addr *ctx, struct config *cfg, __u32 identity, __u64 at,
				     const struct addr *dst, __u16 port, struct addr *proxy, __u16 *proxy_port)
{
	*proxy_port = 0;
	if (cfg && is_v4mapped(dst)) {
		*proxy = cfg->dns4;
		*proxy_port = cfg->dns4_port;
	} else if (cfg) {
		*proxy = cfg->dns6;
		*proxy_port = cfg->dns6_port;
	}
	if (*proxy_port == 0) {
		emit_deny(ctx, identity, dst, port, ctx->family, DENY_NO_PROXY, ctx->type, ctx->protocol);
		return REFUSE;
	}
	if (!record_origin(ctx, identity, at, dst, port))
		return REFUSE;
	return ALLOW;
}

/* connect_common decides a tagged connect and, for a TCP redirect, records
 * the origin and returns 1 with *proxy and *proxy_port set. */
static __always_inline int connect_common(struct bpf_sock_addr *ctx, const struct addr *dst, __u16 port,
					  int *redirect, struct addr *proxy, __u16 *proxy_port)
{
	struct config *cfg = get_config();
	__u32 identity = 0;
	__u64 at = bpf_ktime_get_ns();

	*redirect = 0;
	if (!tagged(cfg, &identity))
		return ALLOW;
	int dns = is_dns(cfg, dst, port);
	if (ctx->type == SOCK_DGRAM) {
		if (!dns)
			return udp_verdict(ctx, cfg, identity, dst, port);
		/* A connected UDP socket: its sends pass no sendmsg hook, so it
		 * is steered here, and the egress program keys its record by
		 * the tuple once the kernel has picked its source port. */
		if (dns_steer(ctx, cfg, identity, at, dst, port, proxy, proxy_port) == REFUSE)
			return REFUSE;
		*redirect = 1;
		return ALLOW;
	}
	if (ctx->type != SOCK_STREAM) {
		emit_deny(ctx, identity, dst, port, ctx->family, DENY_SOCK_TYPE, ctx->type, ctx->protocol);
		return REFUSE;
	}

	/* TCP DNS goes to the proxy whatever the rules say: its DNS decoder
	 * decides each question. */
	int v = dns ? VERDICT_REDIRECT : tcp_verdict(identity, dst, port);
	if (v == VERDICT_PASS)
		return ALLOW;
	if (v == VERDICT_DENY) {
		emit_deny(ctx, identity, dst, port, ctx->family, DENY_TCP_RULE, ctx->type, ctx->protocol);
		return REFUSE;
	}

	/* Redirect. An IPv4-mapped destination is an IPv4 connection: it goes
	 * to the IPv4 listener, mapped. */
	if (!cfg) {
		emit_deny(ctx, identity, dst, port, ctx->family, DENY_NO_PROXY, ctx->type, ctx->protocol);
		return REFUSE;
	}
	if (is_v4mapped(dst)) {
		*proxy = cfg->proxy4;
		*proxy_port = cfg->proxy4_port;
	} else {
		*proxy = cfg->proxy6;
		*proxy_port = cfg->proxy6_port;
	}
	if (*proxy_port == 0) {
		emit_deny(ctx, identity, dst, port, ctx->family, DENY_NO_PROXY, ctx->type, ctx->protocol);
		return REFUSE;
	}

	/* Without a record the proxy could not tell who is calling: refuse
	 * rather than redirect anonymously. */
	if (!record_origin(ctx, identity, at, dst, port))
		return REFUSE;
	*redirect = 1;
	return ALLOW;
}

/* verdict_probe is never attached: it runs the rule and resolver logic the
 * hooks share under BPF_PROG_TEST_RUN, which the cgroup program types do not
 * support. */
SEC("syscall")
int verdict_probe(struct verdict_query *q)
{
	if (q->udp == 2)
		q->result = is_dns(get_config(), &q->dst, q->port);
	else if (q->udp)
		q->result = udp_allowed(q->identity, &q->dst, q->port);
	else
		q->result = tcp_verdict(q->identity, &q->dst, q->port);
	return 0;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	struct addr dst, proxy = {};
	__u16 proxy_port = 0;
	int redirect;

	set_v4mapped(&dst, ctx->user_ip4);
	int ret = connect_common(ctx, &dst, bpf_ntohs(ctx->user_port), &redirect, &proxy, &proxy_port);
	if (ret == ALLOW && redirect) {
		ctx->user_ip4 = proxy.w[3];
		ctx->user_port = bpf_htons(proxy_port);
	}
	return ret;
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	struct addr dst, proxy = {};
	__u16 proxy_port = 0;
	int redirect;

	dst.w[0] = ctx->user_ip6[0];
	dst.w[1] = ctx->user_ip6[1];
	dst.w[2] = ctx->user_ip6[2];
	dst.w[3] = ctx->user_ip6[3];
	int ret = connect_common(ctx, &dst, bpf_ntohs(ctx->user_port), &redirect, &proxy, &proxy_port);
	if (ret == ALLOW && redirect) {
		ctx->user_ip6[0] = proxy.w[0];
		ctx->user_ip6[1] = proxy.w[1];
		ctx->user_ip6[2] = proxy.w[2];
		ctx->user_ip6[3] = proxy.w[3];
		ctx->user_port = bpf_htons(proxy_port);
	}
	return ret;
}

/* sendmsg4 and sendmsg6 decide tagged datagrams sent with an address
 * (sendto, sendmsg): DNS goes to interlockd's DNS proxy, the rest only
 * where the UDP rules allow. inet_sendmsg has bound the socket before the
 * hook runs, so the egress program sees the source port the proxy will. */
SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
	struct config *cfg = get_config();
	__u32 identity = 0;
	struct addr dst, proxy = {};
	__u16 port = bpf_ntohs(ctx->user_port), proxy_port;
	__u64 at = bpf_ktime_get_ns();

	if (!tagged(cfg, &identity))
		return ALLOW;
	set_v4mapped(&dst, ctx->user_ip4);
	if (!is_dns(cfg, &dst, port))
		return udp_verdict(ctx, cfg, identity, &dst, port);
	if (dns_steer(ctx, cfg, identity, at, &dst, port, &proxy, &proxy_port) == REFUSE)
		return REFUSE;
	ctx->user_ip4 = proxy.w[3];
	ctx->user_port = bpf_htons(proxy_port);
	return ALLOW;
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx)
{
	struct config *cfg = get_config();
	__u32 identity = 0;
	struct addr dst, proxy = {};
	__u16 port = bpf_ntohs(ctx->user_port), proxy_port;
	__u64 at = bpf_ktime_get_ns();

	if (!tagged(cfg, &identity))
		return ALLOW;
	dst.w[0] = ctx->user_ip6[0];
	dst.w[1] = ctx->user_ip6[1];
	dst.w[2] = ctx->user_ip6[2];
	dst.w[3] = ctx->user_ip6[3];
	if (!is_dns(cfg, &dst, port))
		return udp_verdict(ctx, cfg, identity, &dst, port);
	if (dns_steer(ctx, cfg, identity, at, &dst, port, &proxy, &proxy_port) == REFUSE)
		return REFUSE;
	ctx->user_ip6[0] = proxy.w[0];
	ctx->user_ip6[1] = proxy.w[1];
	ctx->user_ip6[2] = proxy.w[2];
	ctx->user_ip6[3] = proxy.w[3];
	ctx->user_port = bpf_htons(proxy_port);
	return ALLOW;
}

/* recvmsg4 and recvmsg6 show a steered socket's DNS replies as coming from
 * the resolver it asked, not from interlockd's DNS proxy: resolvers in libc
 * drop answers from an address they did not ask. A socket that asked two
 * resolvers at once sees both answers from the last one it asked. */
SEC("cgroup/recvmsg4")
int recvmsg4(struct bpf_sock_addr *ctx)
{
	struct config *cfg = get_config();

	if (!cfg || !cfg->dns4_port || ctx->user_ip4 != cfg->dns4.w[3] ||
	    ctx->user_port != bpf_htons(cfg->dns4_port))
		return ALLOW;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct origin *o = bpf_map_lookup_elem(&sock_origins, &cookie);
	if (o && is_v4mapped(&o->dst)) {
		ctx->user_ip4 = o->dst.w[3];
		ctx->user_port = bpf_htons(o->dst_port);
	}
	return ALLOW;
}

SEC("cgroup/recvmsg6")
int recvmsg6(struct bpf_sock_addr *ctx)
{
	struct config *cfg = get_config();
	struct addr src = {.w = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]}};
	__u16 port = bpf_ntohs(ctx->user_port);

	if (!cfg)
		return ALLOW;
	if (!(cfg->dns4_port && port == cfg->dns4_port && same_addr(&src, &cfg->dns4)) &&
	    !(cfg->dns6_port && port == cfg->dns6_port && same_addr(&src, &cfg->dns6)))
		return ALLOW;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct origin *o = bpf_map_lookup_elem(&sock_origins, &cookie);
	if (o) {
		ctx->user_ip6[0] = o->dst.w[0];
		ctx->user_ip6[1] = o->dst.w[1];
		ctx->user_ip6[2] = o->dst.w[2];
		ctx->user_ip6[3] = o->dst.w[3];
		ctx->user_port = bpf_htons(o->dst_port);
	}
	return ALLOW;
}

/* getpeername shows a redirected socket's original peer, so the agent sees
 * the address it asked for rather than the proxy. */
SEC("cgroup/getpeername4")
int getpeername4(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct origin *o = bpf_map_lookup_elem(&sock_origins, &cookie);

	if (o && is_v4mapped(&o->dst)) {
		ctx->user_ip4 = o->dst.w[3];
		ctx->user_port = bpf_htons(o->dst_port);
	}
	return ALLOW;
}

SEC("cgroup/getpeername6")
int getpeername6(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct origin *o = bpf_map_lookup_elem(&sock_origins, &cookie);

	if (o) {
		ctx->user_ip6[0] = o->dst.w[0];
		ctx->user_ip6[1] = o->dst.w[1];
		ctx->user_ip6[2] = o->dst.w[2];
		ctx->user_ip6[3] = o->dst.w[3];
		ctx->user_port = bpf_htons(o->dst_port);
	}
	return ALLOW;
}

static __always_inline void sockops_tuple(struct bpf_sock_ops *skops, struct tuple *k)
{
	struct addr remote6 = {
		.w = {skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2], skops->remote_ip6[3]},
	};

	k->netns_cookie = bpf_get_netns_cookie(skops);
	/* An IPv4-mapped connection on an AF_INET6 socket is IPv4 underneath;
	 * its IPv6 source may not be filled in yet at TCP_CONNECT_CB. */
	if (skops->family == AF_INET || is_v4mapped(&remote6)) {
		set_v4mapped(&k->local, skops->local_ip4);
		set_v4mapped(&k->remote, skops->remote_ip4);
	} else {
		k->local.w[0] = skops->local_ip6[0];
		k->local.w[1] = skops->local_ip6[1];
		k->local.w[2] = skops->local_ip6[2];
		k->local.w[3] = skops->local_ip6[3];
		k->remote = remote6;
	}
	k->local_port = skops->local_port;
	/* remote_port holds the network-order port in its upper 16 bits on
	 * little-endian hosts. */
	k->remote_port = bpf_ntohl(skops->remote_port);
}

/* sockops re-keys a redirected socket's record by the 4-tuple once the
 * source port is chosen, and cleans up when the socket closes. */
SEC("sockops")
int sock_ops(struct bpf_sock_ops *skops)
{
	__u64 cookie;
	struct origin *o;
	struct tuple k = {};

	switch (skops->op) {
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		/* A connection a tagged listener accepted from another host
		 * (the ingress program recorded its SYN): audit it. */
		sockops_tuple(skops, &k);
		k.netns_cookie = 0;
		o = bpf_map_lookup_elem(&pending_accepts, &k);
		if (!o)
			break;
		struct deny_event *e = bpf_ringbuf_reserve(&deny_events, sizeof(*e), 0);
		if (e) {
			__builtin_memset(e, 0, sizeof(*e));
			e->origin = *o;
			e->origin.time_ns = bpf_ktime_get_ns();
			e->origin.netns_cookie = bpf_get_netns_cookie(skops);
			e->reason = EVENT_ACCEPT;
			e->sock_type = SOCK_STREAM;
			e->protocol = IPPROTO_TCP;
			bpf_ringbuf_submit(e, 0);
		}
		bpf_map_delete_elem(&pending_accepts, &k);
		break;
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		cookie = bpf_get_socket_cookie(skops);
		o = bpf_map_lookup_elem(&sock_origins, &cookie);
		if (!o)
			break;
		sockops_tuple(skops, &k);
		bpf_map_update_elem(&conn_origins, &k, o, BPF_ANY);
		bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != BPF_TCP_CLOSE)
			break;
		cookie = bpf_get_socket_cookie(skops);
		bpf_map_delete_elem(&sock_origins, &cookie);
		/* A connection that was never established will never be
		 * accepted; one that was stays until the proxy's Lookup
		 * consumes it (it may close before the proxy accepts) or the
		 * LRU evicts it. */
		if (skops->args[0] == BPF_TCP_SYN_SENT) {
			sockops_tuple(skops, &k);
			bpf_map_delete_elem(&conn_origins, &k);
		}
		break;
	}
	return 1;
}

/* sock_create refuses tagged tasks the sockets that would bypass the
 * connect hooks: raw and packet sockets, and inet protocols other than TCP
 * and UDP (SCTP, ICMP ping sockets, MPTCP...). */
SEC("cgroup/sock_create")
int sock_create(struct bpf_sock *sk)
{
	struct config *cfg = get_config();
	__u32 identity = 0;

	if (!tagged(cfg, &identity))
		return ALLOW;
	__u32 family = sk->family, type = sk->type, protocol = sk->protocol;
	if (family == AF_PACKET ||
	    ((family == AF_INET || family == AF_INET6) &&
	     (type == SOCK_RAW || (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)))) {
		emit_deny(sk, identity, 0, 0, family, DENY_SOCKET, type, protocol);
		return REFUSE;
	}
	return ALLOW;
}

/* The kernel's context behind struct bpf_sock_addr (include/linux/filter.h);
 * field offsets are relocated against the running kernel's BTF. */
struct bpf_sock_addr_kern {
	void *sk;
	void *uaddr;
	__u64 tmp_reg;
	void *t_ctx;
	__u32 uaddrlen;
} __attribute__((preserve_access_index));

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

/* unix_norm is the state of normalising one unix socket path. */
struct unix_norm {
	char raw[UNIX_PATH_LEN + 4]; /* all of sun_path, NUL-padded */
	char out[UNIX_PATH_LEN];
	__u32 j;    /* bytes written to out */
	__u32 prev; /* the last byte written */
};

/* unix_norm_step handles byte i of a path: it drops a '/' after a '/' and a
 * "." segment. A bpf_loop callback, so that the verifier checks one step
 * rather than every path through all 108 of them. */
static long unix_norm_step(__u64 i, struct unix_norm *n)
{
	if (i >= UNIX_PATH_LEN)
		return 1;
	char c = n->raw[i];
	if (c == 0)
		return 1;
	if (c == '/' && n->prev == '/')
		return 0;
	if (c == '.' && n->prev == '/' && (n->raw[i + 1] == '/' || n->raw[i + 1] == 0))
		return 0;
	__u32 j = n->j;
	if (j >= UNIX_PATH_LEN - 1)
		return 1;
	n->out[j] = c;
	n->j = j + 1;
	n->prev = c;
	return 0;
}

/* read_unix_path fills key with the socket address of a unix connect or
 * send: an abstract name as '@' and its bytes, a path with repeated slashes
 * and "." segments removed, so that //x and /./x match /x. What cannot be
 * resolved here (relative paths, symlinks, "..", other mounts of the same
 * socket) stays as given; the allow-list refuses it. */
static __always_inline void read_unix_path(struct bpf_sock_addr *ctx, struct unix_path *key)
{
	struct bpf_sock_addr_kern *sa = bpf_cast_to_kern_ctx(ctx);
	struct unix_norm n = {};
	__u32 len = sa->uaddrlen;
	char *uaddr = sa->uaddr;

	/* sun_path follows the 2-byte sun_family. All of it is read: a path
	 * may fill sun_path without a NUL, and a slash-padded one normalises
	 * to a listed path only once its last byte is in. */
	if (len <= 2)
		return;
	len -= 2;
	if (len > UNIX_PATH_LEN)
		len = UNIX_PATH_LEN;
	bpf_probe_read_kernel(n.raw, len, uaddr + 2);
	if (n.raw[0] == 0) {
		key->path[0] = '@';
		__builtin_memcpy(key->path + 1, n.raw + 1, UNIX_PATH_LEN - 2);
		return;
	}
	bpf_loop(UNIX_PATH_LEN, unix_norm_step, &n, 0);
	__builtin_memcpy(key->path, n.out, UNIX_PATH_LEN - 1);
}

/* unix_decide refuses a tagged task's unix connect or send to a path in
 * denied_unix, or, when its identity has an allow-list, to any path (or
 * abstract name) not on it. */
static __always_inline int unix_decide(struct bpf_sock_addr *ctx)
{
	struct config *cfg = get_config();
	__u32 identity = 0;
	struct unix_allow_key ak = {};

	if (!tagged(cfg, &identity))
		return ALLOW;
	read_unix_path(ctx, (struct unix_path *)ak.path);
	if (!bpf_map_lookup_elem(&denied_unix, ak.path)) {
		if (!bpf_map_lookup_elem(&unix_allow_on, &identity))
			return ALLOW;
		ak.identity = identity;
		if (bpf_map_lookup_elem(&unix_allowed, &ak))
			return ALLOW;
	}

	struct deny_event *e = bpf_ringbuf_reserve(&deny_events, sizeof(*e), 0);
	if (e) {
		__builtin_memset(e, 0, sizeof(*e));
		fill_origin(&e->origin, identity);
		e->origin.family = AF_UNIX;
		e->origin.netns_cookie = bpf_get_netns_cookie(ctx);
		e->reason = DENY_UNIX_PATH;
		e->sock_type = ctx->type;
		__builtin_memcpy(e->path, ak.path, sizeof(e->path));
		bpf_ringbuf_submit(e, 0);
	}
	return REFUSE;
}

/* connect_unix (kernel 6.7 and later) applies unix_decide to connect(). */
SEC("cgroup/connect_unix")
int connect_unix(struct bpf_sock_addr *ctx)
{
	return unix_decide(ctx);
}

/* sendmsg_unix (kernel 6.7 and later) applies unix_decide to sendto() and
 * sendmsg() with an address on unconnected datagram sockets, which never
 * pass through connect_unix. */
SEC("cgroup/sendmsg_unix")
int sendmsg_unix(struct bpf_sock_addr *ctx)
{
	return unix_decide(ctx);
}

/* is_loopback reports whether a is 127.0.0.0/8 (mapped) or ::1. */
static __always_inline int is_loopback(const struct addr *a)
{
	if (is_v4mapped(a))
		return (bpf_ntohl(a->w[3]) >> 24) == 127;
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == 0 && a->w[3] == bpf_htonl(1);
}

/* bind_common refuses a tagged bind to any address but loopback, the
 * wildcard included, unless a listen rule of the identity allows it. Port 0
 * passes (clients choosing a source address bind that way): it is what a
 * connect() or a first sendto() does anyway without calling the bind hooks,
 * so the ingress program, not this one, keeps such sockets from hearing
 * other hosts. The proxy's and DNS proxy's ports are refused on every
 * address: a tagged task holding one while interlockd is down would receive
 * other identities' redirected connects or questions. */
static __always_inline int bind_common(struct bpf_sock_addr *ctx, const struct addr *a, __u16 port)
{
	struct config *cfg = get_config();
	__u32 identity = 0;

	if (!tagged(cfg, &identity))
		return ALLOW;
	if (cfg && port != 0 && (port == cfg->proxy4_port || port == cfg->proxy6_port ||
				 port == cfg->dns4_port || port == cfg->dns6_port))
		goto refuse;
	if (is_loopback(a) || port == 0)
		return ALLOW;
	int v = match(bpf_map_lookup_elem(&listen_rules, &identity), a, port);
	if (v >= 0 && v != VERDICT_DENY)
		return ALLOW;
refuse:
	emit_deny(ctx, identity, a, port, ctx->family, DENY_BIND, ctx->type, ctx->protocol);
	return REFUSE;
}

SEC("cgroup/bind4")
int bind4(struct bpf_sock_addr *ctx)
{
	struct addr a;

	set_v4mapped(&a, ctx->user_ip4);
	return bind_common(ctx, &a, bpf_ntohs(ctx->user_port));
}

SEC("cgroup/bind6")
int bind6(struct bpf_sock_addr *ctx)
{
	struct addr a = {.w = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]}};

	return bind_common(ctx, &a, bpf_ntohs(ctx->user_port));
}

/* is_routing_opt reports whether a socket option sets IP options (source
 * routes among them) or IPv6 extension headers: a type-4 routing header set
 * with IPV6_RTHDR, unprivileged, sends the packets to its first segment
 * rather than to the address the connect and sendmsg hooks checked. IPv4
 * options and the other IPv6 headers need CAP_NET_RAW on current kernels,
 * but an agent may have kept it, and refusing them costs nothing. */
static __always_inline int is_routing_opt(int level, int optname)
{
	if (level == SOL_IP)
		return optname == IP_OPTIONS || optname == IP_RETOPTS;
	if (level != SOL_IPV6)
		return 0;
	switch (optname) {
	case IPV6_2292HOPOPTS:
	case IPV6_2292DSTOPTS:
	case IPV6_2292RTHDR:
	case IPV6_2292PKTOPTIONS:
	case IPV6_HOPOPTS:
	case IPV6_RTHDRDSTOPTS:
	case IPV6_RTHDR:
	case IPV6_DSTOPTS:
		return 1;
	}
	return 0;
}

/* set_sockopt (kernel 6.1 and later, for the cgroup walk in sockopt
 * programs) refuses tagged tasks the options is_routing_opt names. */
SEC("cgroup/setsockopt")
int set_sockopt(struct bpf_sockopt *ctx)
{
	struct config *cfg;
	__u32 identity = 0;
	int level = ctx->level, optname = ctx->optname;

	if (is_routing_opt(level, optname)) {
		cfg = get_config();
		if (tagged(cfg, &identity))
			goto refuse;
	}
	/* The program runs for every setsockopt on the host. Kernels before
	 * 6.5 fail a call whose value is over a page (iptables' are) with
	 * EFAULT unless the program sets optlen to 0: "use the caller's own
	 * buffer, unchanged". */
	if (ctx->optlen > SOCKOPT_PAGE)
		ctx->optlen = 0;
	return ALLOW;

refuse:;
	struct deny_event *e = bpf_ringbuf_reserve(&deny_events, sizeof(*e), 0);
	if (e) {
		__builtin_memset(e, 0, sizeof(*e));
		fill_origin(&e->origin, identity);
		e->reason = DENY_SOCKOPT;
		e->detail = (__u32)level << 16 | (__u32)optname;
		struct bpf_sock *sk = ctx->sk;
		if (sk) {
			e->origin.family = sk->family;
			e->sock_type = sk->type;
			e->protocol = sk->protocol;
		}
		bpf_ringbuf_submit(e, 0);
	}
	return REFUSE;
}

/* skb_tagged is tagged for the socket a packet belongs to, for programs
 * that may run outside the task's context (softirq). */
static __always_inline int skb_tagged(struct config *cfg, struct __sk_buff *skb, __u32 *identity)
{
	int found = 0;

	for (int level = 0; level < MAX_CGROUP_DEPTH; level++) {
		__u64 id = bpf_skb_ancestor_cgroup_id(skb, level);
		if (!id)
			break;
		if (cfg && cfg->self_cgroup == id)
			return 0;
		__u32 *ident = bpf_map_lookup_elem(&tagged_cgroups, &id);
		if (ident) {
			*identity = *ident;
			found = 1;
		}
	}
	return found;
}

/* skb_event sends an event about a tagged socket's packet; no task context
 * is at hand, so only the socket's cgroup names who. */
static __always_inline void skb_event(struct __sk_buff *skb, __u32 identity, __u32 reason, const struct addr *peer,
				      __u16 port, __u32 protocol)
{
	struct deny_event *e = bpf_ringbuf_reserve(&deny_events, sizeof(*e), 0);
	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e));
	e->origin.identity = identity;
	e->origin.cgroup_id = bpf_skb_cgroup_id(skb);
	e->origin.time_ns = bpf_ktime_get_ns();
	e->origin.family = skb->family;
	if (peer)
		e->origin.dst = *peer;
	e->origin.dst_port = port;
	e->reason = reason;
	e->protocol = protocol;
	bpf_ringbuf_submit(e, 0);
}

/* ip_layout finds a packet's transport header: its protocol and offset,
 * past at most MAX_EXT_HEADERS IPv6 hop-by-hop and destination options
 * headers. *routed is set when an IPv6 routing header or IPv4 options are
 * present. Returns 0 when the packet is neither IPv4 nor IPv6. */
static __always_inline int ip_layout(struct __sk_buff *skb, __u8 *proto, __u32 *off, int *routed)
{
	__u8 b[2];

	*routed = 0;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (bpf_skb_load_bytes(skb, 0, b, 1))
			return 0;
		*off = (b[0] & 0x0f) * 4;
		*routed = *off > 20;
		if (bpf_skb_load_bytes(skb, 9, proto, 1))
			return 0;
		return 1;
	}
	if (skb->protocol != bpf_htons(ETH_P_IPV6))
		return 0;
	if (bpf_skb_load_bytes(skb, 6, proto, 1))
		return 0;
	*off = 40;
	for (int i = 0; i < MAX_EXT_HEADERS; i++) {
		if (*proto == NEXTHDR_ROUTING) {
			*routed = 1;
			return 1;
		}
		if (*proto != NEXTHDR_HOP && *proto != NEXTHDR_DEST)
			return 1;
		if (bpf_skb_load_bytes(skb, *off, b, 2))
			return 0;
		*proto = b[0];
		*off += ((__u32)b[1] + 1) * 8;
	}
	/* More extension headers than walked: treat as routed. */
	*routed = 1;
	return 1;
}

/* packet_addrs reads a packet's source and destination addresses (IPv4
 * mapped). Returns 0 on success. */
static __always_inline int packet_addrs(struct __sk_buff *skb, struct addr *src, struct addr *dst)
{
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u32 a[2];
		if (bpf_skb_load_bytes(skb, 12, a, sizeof(a)))
			return -1;
		set_v4mapped(src, a[0]);
		set_v4mapped(dst, a[1]);
		return 0;
	}
	if (bpf_skb_load_bytes(skb, 8, src, sizeof(*src)) || bpf_skb_load_bytes(skb, 24, dst, sizeof(*dst)))
		return -1;
	return 0;
}

/* dns_rekey copies a steered socket's record (by cookie) to dns_origins,
 * keyed by the tuple of a datagram it sends to the DNS proxy: the tuple is
 * what the proxy sees, and only here is the source port always known
 * (connect() on UDP binds after its hook runs). */
static __always_inline void dns_rekey(struct __sk_buff *skb, __u32 off)
{
	struct config *cfg = get_config();
	struct tuple k = {};
	__be16 ports[2];

	if (!cfg || (!cfg->dns4_port && !cfg->dns6_port))
		return;
	if (packet_addrs(skb, &k.local, &k.remote) || bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
		return;
	k.local_port = bpf_ntohs(ports[0]);
	k.remote_port = bpf_ntohs(ports[1]);
	if (!(cfg->dns4_port && k.remote_port == cfg->dns4_port && same_addr(&k.remote, &cfg->dns4)) &&
	    !(cfg->dns6_port && k.remote_port == cfg->dns6_port && same_addr(&k.remote, &cfg->dns6)))
		return;
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct origin *o = bpf_map_lookup_elem(&sock_origins, &cookie);
	if (!o)
		return;
	k.netns_cookie = o->netns_cookie;
	bpf_map_update_elem(&dns_origins, &k, o, BPF_ANY);
}

/* The network namespaces interlockd serves, by netns cookie: its own and
 * each it listens in (datapath.EnterNetns). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} served_netns SEC(".maps");

/* hold_unserved reports whether a TCP packet is the SYN of a redirected
 * connection made in a network namespace interlockd does not serve yet (a
 * container just started): dropped, it is sent again by TCP (after 1 s,
 * then 3 s), by when interlockd listens there, so the agent's connect waits
 * instead of being refused. Namespaces interlockd served before it died
 * stay in the map, so their connects are still refused at once. */
static __always_inline int hold_unserved(struct __sk_buff *skb, __u32 off)
{
	__u8 flags;

	if (bpf_skb_load_bytes(skb, off + 13, &flags, 1))
		return 0;
	/* SYN without ACK: a connection request. */
	if ((flags & 0x12) != 0x02)
		return 0;
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct origin *o = bpf_map_lookup_elem(&sock_origins, &cookie);
	if (!o)
		return 0;
	__u64 netns = o->netns_cookie;
	return bpf_map_lookup_elem(&served_netns, &netns) == 0;
}

/* egress drops tagged sockets' packets that carry IPv4 options or an IPv6
 * routing header, however they got there: set_sockopt refuses the socket
 * options, but sendmsg() control messages (IP_RETOPTS with a source route,
 * IPV6_RTHDR type 2 where CONFIG_IPV6_MIP6 is built) pass no cgroup hook.
 * The sender gets EPERM. It also keys steered DNS datagrams for the DNS
 * proxy (dns_rekey), and holds the SYNs of redirected connections made in
 * network namespaces not served yet (hold_unserved). */
SEC("cgroup_skb/egress")
int egress(struct __sk_buff *skb)
{
	struct config *cfg;
	__u32 identity = 0, off;
	__u8 proto;
	int routed;

	if (!ip_layout(skb, &proto, &off, &routed))
		return ALLOW;
	if (!routed) {
		if (proto == IPPROTO_UDP)
			dns_rekey(skb, off);
		else if (proto == IPPROTO_TCP && hold_unserved(skb, off))
			return REFUSE;
		return ALLOW;
	}
	cfg = get_config();
	if (!skb_tagged(cfg, skb, &identity))
		return ALLOW;
	skb_event(skb, identity, DENY_SOURCE_ROUTE, 0, 0, proto);
	return REFUSE;
}

/* inbound_report reports whether an inbound drop may be sent as an event:
 * a flood from another host must not become a flood of audit records. */
static __always_inline int inbound_report(void)
{
	__u32 zero = 0;
	__u64 *last = bpf_map_lookup_elem(&inbound_reported, &zero);
	__u64 now = bpf_ktime_get_ns();

	if (!last || now - *last < INBOUND_EVENT_GAP_NS)
		return 0;
	*last = now;
	return 1;
}

/* listen_allowed reports whether a socket's bound address and port match a
 * listen rule of the identity: the wildcard when it bound none. Each field
 * is loaded on its own: the verifier refuses arithmetic on a socket
 * pointer, which a shared base for src_ip4 and src_ip6 is. */
static __always_inline int listen_allowed(struct bpf_sock *sk, __u32 identity)
{
	struct addr bound = {};
	__u32 sk_family = sk->family, sport = sk->src_port;
	__u32 s4 = sk->src_ip4;
	barrier_var(s4);
	__u32 s6_0 = sk->src_ip6[0];
	barrier_var(s6_0);
	__u32 s6_1 = sk->src_ip6[1];
	barrier_var(s6_1);
	__u32 s6_2 = sk->src_ip6[2];
	barrier_var(s6_2);
	__u32 s6_3 = sk->src_ip6[3];
	barrier_var(s6_3);
	if (sk_family == AF_INET) {
		set_v4mapped(&bound, s4);
	} else {
		bound.w[0] = s6_0;
		bound.w[1] = s6_1;
		bound.w[2] = s6_2;
		bound.w[3] = s6_3;
	}
	int v = match(bpf_map_lookup_elem(&listen_rules, &identity), &bound, sport);
	return v >= 0 && v != VERDICT_DENY;
}

/* ingress closes the ways in that bind4/6 cannot: listen() on an unbound
 * socket binds the wildcard without calling them, a socket bound before
 * its cgroup was tagged never met them, and a UDP socket's first sendto()
 * binds the wildcard too. From other hosts (loopback sources pass), a
 * tagged socket gets no SYN unless a listen rule allows its address and
 * port, and no datagram unless that, or the sender is one its UDP rules
 * let it send to (the replies); DNS answers come from interlockd, on
 * loopback. SYNs that pass are recorded so
 * that sockops can audit the connection once established. */
SEC("cgroup_skb/ingress")
int ingress(struct __sk_buff *skb)
{
	struct config *cfg;
	__u32 identity = 0, off;
	__u8 proto, flags;
	int routed;
	struct tuple k = {};
	__be16 ports[2];

	if (!ip_layout(skb, &proto, &off, &routed) || (proto != IPPROTO_TCP && proto != IPPROTO_UDP))
		return ALLOW;
	if (proto == IPPROTO_TCP) {
		if (bpf_skb_load_bytes(skb, off + 13, &flags, 1))
			return ALLOW;
		/* SYN without ACK: a connection request. */
		if ((flags & 0x12) != 0x02)
			return ALLOW;
	}
	if (packet_addrs(skb, &k.remote, &k.local) || is_loopback(&k.remote))
		return ALLOW;
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return ALLOW;
	sk = bpf_sk_fullsock(sk);
	if (!sk || (proto == IPPROTO_TCP && sk->state != BPF_TCP_LISTEN))
		return ALLOW;
	cfg = get_config();
	if (!skb_tagged(cfg, skb, &identity))
		return ALLOW;
	if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
		return ALLOW;
	k.remote_port = bpf_ntohs(ports[0]);
	k.local_port = bpf_ntohs(ports[1]);

	if (proto == IPPROTO_UDP) {
		if (udp_allowed(identity, &k.remote, k.remote_port) || listen_allowed(sk, identity))
			return ALLOW;
		if (inbound_report())
			skb_event(skb, identity, DENY_UDP, &k.remote, k.remote_port, IPPROTO_UDP);
		return REFUSE;
	}
	if (!listen_allowed(sk, identity)) {
		if (inbound_report())
			skb_event(skb, identity, DENY_BIND, &k.remote, k.remote_port, IPPROTO_TCP);
		return REFUSE;
	}
	struct origin o = {};
	o.identity = identity;
	o.cgroup_id = bpf_skb_cgroup_id(skb);
	o.family = skb->family;
	o.dst = k.remote;
	o.dst_port = k.remote_port;
	bpf_map_update_elem(&pending_accepts, &k, &o, BPF_ANY);
	return ALLOW;
}

/* The programs from here on are bpf LSM programs (lsm/, the bpf LSM active):
 * they run for every task and act only on tagged ones. cilium/ebpf cannot load
 * the cgroup-scoped lsm_cgroup/ flavour (it does not resolve their hook's BTF
 * id), and interlockd attaches at the cgroup root in production anyway.
 *
 * socket_create gives tagged tasks an allow-list of socket families: inet and inet6 (which
 * cgroup/sock_create and the connect hooks then police), unix, and netlink
 * route (getaddrinfo asks it for the host's addresses). Everything else,
 * packet, vsock, bluetooth, can, xdp, other netlink families..., never passes
 * through a hook that knows where it goes, so it is refused. Arguments:
 * family, type, protocol, kern. */
SEC("lsm/socket_create")
int socket_create(unsigned long long *ctx)
{
	int family = ctx[0], type = ctx[1], protocol = ctx[2], kern = ctx[3];
	struct config *cfg;
	__u32 identity = 0;

	if (kern || family == AF_INET || family == AF_INET6 || family == AF_UNIX ||
	    (family == AF_NETLINK && protocol == NETLINK_ROUTE))
		return LSM_ALLOW;
	cfg = get_config();
	if (!tagged(cfg, &identity))
		return LSM_ALLOW;
	struct deny_event *e = bpf_ringbuf_reserve(&deny_events, sizeof(*e), 0);
	if (e) {
		__builtin_memset(e, 0, sizeof(*e));
		fill_origin(&e->origin, identity);
		e->origin.family = family;
		e->reason = DENY_SOCKET;
		e->sock_type = type;
		e->protocol = protocol;
		bpf_ringbuf_submit(e, 0);
	}
	return LSM_REFUSE;
}

/* interlockd's listening sockets, IPv4 at PROXY_LISTENER_V4 and IPv6 at
 * PROXY_LISTENER_V6. A socket leaves the map when it closes, so with
 * interlockd dead the slot is empty. */
#define PROXY_LISTENER_V4 0
#define PROXY_LISTENER_V6 1

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} proxy_listeners SEC(".maps");

/* interlockd's DNS proxy sockets (UDP), IPv4 at PROXY_LISTENER_V4 and IPv6
 * at PROXY_LISTENER_V6; empty while interlockd is down. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_listeners SEC(".maps");

/* dns_lookup is proxy_lookup for UDP: a datagram to the DNS proxy address
 * (config dns4/dns6 and port) goes to interlockd's socket in dns_listeners
 * and to nothing else, so a steered question never reaches another process
 * that bound that address (with SO_REUSEPORT, or while interlockd is down). */
static __always_inline int dns_lookup(struct bpf_sk_lookup *ctx, struct config *cfg)
{
	__u32 key;

	if (ctx->family == AF_INET) {
		if (!cfg->dns4_port || ctx->local_port != cfg->dns4_port || ctx->local_ip4 != cfg->dns4.w[3])
			return SK_PASS;
		key = PROXY_LISTENER_V4;
	} else if (ctx->family == AF_INET6) {
		if (!cfg->dns6_port || ctx->local_port != cfg->dns6_port ||
		    ctx->local_ip6[0] != cfg->dns6.w[0] || ctx->local_ip6[1] != cfg->dns6.w[1] ||
		    ctx->local_ip6[2] != cfg->dns6.w[2] || ctx->local_ip6[3] != cfg->dns6.w[3])
			return SK_PASS;
		key = PROXY_LISTENER_V6;
	} else {
		return SK_PASS;
	}
	struct bpf_sock *sk = bpf_map_lookup_elem(&dns_listeners, &key);
	if (!sk)
		return SK_DROP;
	/* No reuseport selection: a socket that joined interlockd's group
	 * would otherwise get its share of the questions. */
	long err = bpf_sk_assign(ctx, sk, BPF_SK_LOOKUP_F_NO_REUSEPORT);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}

/* proxy_lookup (sk_lookup, kernel 5.9 and later) runs for every listener
 * lookup in interlockd's network namespace. A TCP lookup for the proxy
 * address (config proxy4/proxy6 and port) goes to interlockd's own listening
 * socket in proxy_listeners, and to nothing else: with the slot empty
 * (interlockd down) it is dropped, so the connect is refused even when
 * another process has bound that address; a squatter never receives a
 * redirected connection. UDP to the DNS proxy address is handled alike
 * (dns_lookup). Every other lookup passes untouched, so several data paths
 * with different proxy ports can share a namespace. */
SEC("sk_lookup")
int proxy_lookup(struct bpf_sk_lookup *ctx)
{
	struct config *cfg;
	__u32 key;

	cfg = get_config();
	if (!cfg)
		return SK_PASS;
	if (ctx->protocol == IPPROTO_UDP)
		return dns_lookup(ctx, cfg);
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	if (ctx->family == AF_INET) {
		if (!cfg->proxy4_port || ctx->local_port != cfg->proxy4_port || ctx->local_ip4 != cfg->proxy4.w[3])
			return SK_PASS;
		key = PROXY_LISTENER_V4;
	} else if (ctx->family == AF_INET6) {
		if (!cfg->proxy6_port || ctx->local_port != cfg->proxy6_port ||
		    ctx->local_ip6[0] != cfg->proxy6.w[0] || ctx->local_ip6[1] != cfg->proxy6.w[1] ||
		    ctx->local_ip6[2] != cfg->proxy6.w[2] || ctx->local_ip6[3] != cfg->proxy6.w[3])
			return SK_PASS;
		key = PROXY_LISTENER_V6;
	} else {
		return SK_PASS;
	}

	struct bpf_sock *sk = bpf_map_lookup_elem(&proxy_listeners, &key);
	if (!sk)
		return SK_DROP;
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}

/* The kernel structures the LSM programs below read; offsets are relocated
 * against the running kernel's BTF (CO-RE), so only the fields used appear. */
struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
	int level;
	struct cgroup *ancestors[];
} __attribute__((preserve_access_index));

struct css_set {
	struct cgroup *dfl_cgrp;
} __attribute__((preserve_access_index));

struct task_struct {
	struct css_set *cgroups;
} __attribute__((preserve_access_index));

struct super_block {
	unsigned long s_magic;
} __attribute__((preserve_access_index));

struct qstr {
	const unsigned char *name;
} __attribute__((preserve_access_index));

struct inode {
	void *i_private;
} __attribute__((preserve_access_index));

struct dentry {
	struct qstr d_name;
	struct super_block *d_sb;
	struct dentry *d_parent;
	struct inode *d_inode;
} __attribute__((preserve_access_index));

struct path {
	struct dentry *dentry;
} __attribute__((preserve_access_index));

struct file {
	struct path f_path;
	unsigned int f_mode;
} __attribute__((preserve_access_index));

#define CGROUP2_SUPER_MAGIC 0x63677270
#define FMODE_WRITE 0x2
#define CLONE_INTO_CGROUP 0x200000000ULL

/* same_name compares n bytes, the terminating NUL included; BPF has no
 * memcmp to call, so the loop is unrolled. */
static __always_inline int same_name(const char *a, const char *b, int n)
{
#pragma unroll
	for (int i = 0; i < 16; i++) {
		if (i >= n)
			break;
		if (a[i] != b[i])
			return 0;
	}
	return 1;
}

/* lsm_deny sends a deny event for the current task and refuses. */
static __always_inline int lsm_deny(__u32 identity, __u32 reason, __u32 detail)
{
	struct deny_event *e = bpf_ringbuf_reserve(&deny_events, sizeof(*e), 0);
	if (e) {
		__builtin_memset(e, 0, sizeof(*e));
		fill_origin(&e->origin, identity);
		e->reason = reason;
		e->protocol = detail;
		bpf_ringbuf_submit(e, 0);
	}
	return LSM_REFUSE;
}

/* task_identity is tagged() for another task: its cgroup's deepest tagged
 * ancestor names the identity; 0 when it has none, or when it runs in
 * interlockd's cgroup or below. Identities are numbered from 1. */
static __always_inline __u32 task_identity(struct config *cfg, struct task_struct *task)
{
	struct cgroup *cgrp = BPF_CORE_READ(task, cgroups, dfl_cgrp);
	__u32 found = 0;
	int level;

	if (!cgrp)
		return 0;
	level = BPF_CORE_READ(cgrp, level);
	for (int l = 0; l < MAX_CGROUP_DEPTH; l++) {
		struct cgroup *anc = 0;
		if (l > level)
			break;
		bpf_core_read(&anc, sizeof(anc), &cgrp->ancestors[l]);
		if (!anc)
			break;
		__u64 id = BPF_CORE_READ(anc, kn, id);
		if (cfg && cfg->self_cgroup == id)
			return 0;
		__u32 *ident = bpf_map_lookup_elem(&tagged_cgroups, &id);
		if (ident)
			found = *ident;
	}
	return found;
}

/* ptrace_access_check refuses a tagged tracer
 * any task that is not of its own identity: with ptrace of a same-uid process
 * outside the cgroup (Yama off or in mode 0), an agent makes that process
 * connect for it. Covers PTRACE_ATTACH/SEIZE and /proc/PID/mem and similar
 * access checks; process_vm_writev goes through the same check. Arguments:
 * child, mode. */
SEC("lsm/ptrace_access_check")
int ptrace_access_check(unsigned long long *ctx)
{
	struct task_struct *child = (void *)ctx[0];
	struct config *cfg = get_config();
	__u32 identity = 0;

	if (!tagged(cfg, &identity))
		return LSM_ALLOW;
	if (task_identity(cfg, child) == identity)
		return LSM_ALLOW;
	return lsm_deny(identity, DENY_PTRACE, 0);
}

/* cgroup_dir_identity is tagged() for a cgroup2 directory: each directory's
 * kernfs node (the inode's i_private) has the cgroup's id, and the walk goes
 * up through the dentries, the deepest tagged one naming the identity. 0 when
 * none is tagged, or when the directory is interlockd's cgroup or below. */
static __always_inline __u32 cgroup_dir_identity(struct config *cfg, struct dentry *d)
{
	__u32 found = 0;

	for (int i = 0; i < MAX_CGROUP_DEPTH; i++) {
		struct kernfs_node *kn = BPF_CORE_READ(d, d_inode, i_private);
		__u64 id = BPF_CORE_READ(kn, id);
		if (cfg && cfg->self_cgroup == id)
			return 0;
		__u32 *ident = bpf_map_lookup_elem(&tagged_cgroups, &id);
		if (ident && !found)
			found = *ident;
		struct dentry *parent = BPF_CORE_READ(d, d_parent);
		if (!parent || parent == d)
			break;
		d = parent;
	}
	return found;
}

/* file_open refuses a tagged task opening for writing the cgroup.procs or
 * cgroup.threads of a cgroup outside its identity: root in a tagged cgroup,
 * even with no capability, could otherwise move itself out. Moves within the
 * identity stay allowed: systemd's forked child attaches itself to its
 * unit's cgroup again after the parent already put it there. The
 * superblock check comes first, so opens elsewhere cost two loads. */
SEC("lsm/file_open")
int file_open(unsigned long long *ctx)
{
	struct file *f = (void *)ctx[0];
	char name[16] = {};
	struct config *cfg;
	__u32 identity = 0;

	if (BPF_CORE_READ(f, f_path.dentry, d_sb, s_magic) != CGROUP2_SUPER_MAGIC)
		return LSM_ALLOW;
	if (!(BPF_CORE_READ(f, f_mode) & FMODE_WRITE))
		return LSM_ALLOW;
	bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(f, f_path.dentry, d_name.name));
	if (!same_name(name, "cgroup.procs", 13) && !same_name(name, "cgroup.threads", 15))
		return LSM_ALLOW;
	cfg = get_config();
	if (!tagged(cfg, &identity))
		return LSM_ALLOW;
	if (cgroup_dir_identity(cfg, BPF_CORE_READ(f, f_path.dentry, d_parent)) == identity)
		return LSM_ALLOW;
	return lsm_deny(identity, DENY_CGROUP_MOVE, 0);
}

/* task_alloc refuses clone3(CLONE_INTO_CGROUP)
 * from a tagged task: the child would start in another cgroup, and the
 * kernel checks only the target's cgroup.procs permissions, not an open.
 * Arguments: task, clone_flags. */
SEC("lsm/task_alloc")
int task_alloc(unsigned long long *ctx)
{
	__u64 flags = ctx[1];
	struct config *cfg;
	__u32 identity = 0;

	if (!(flags & CLONE_INTO_CGROUP))
		return LSM_ALLOW;
	cfg = get_config();
	if (!tagged(cfg, &identity))
		return LSM_ALLOW;
	return lsm_deny(identity, DENY_CGROUP_MOVE, 1);
}

/* bpf refuses the bpf() system call to tagged
 * tasks: with CAP_BPF or root an agent could detach or rewrite the programs
 * and maps that enforce it. Arguments: cmd, attr, size. */
SEC("lsm/bpf")
int bpf_syscall(unsigned long long *ctx)
{
	struct config *cfg = get_config();
	__u32 identity = 0;

	if (!tagged(cfg, &identity))
		return LSM_ALLOW;
	return lsm_deny(identity, DENY_BPF, (__u32)ctx[0]);
}
