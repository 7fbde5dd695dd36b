/* Types shared by the Interlock programs and, through bpf2go -type, by the Go
 * loader in agent/datapath. Every struct is laid out without implicit padding
 * so that the generated Go structs match byte for byte. */
#pragma once

#include <linux/types.h>

/* A tagged cgroup may sit at most this many levels below the cgroup2 root for
 * its ancestors to be seen by the walk (the verifier needs a bound). */
#define MAX_CGROUP_DEPTH 32
/* Ordered intercept rules per identity, first match wins. */
#define MAX_RULES 16
/* DNS servers whose port, besides 53, is steered to interlockd's DNS proxy. */
#define MAX_RESOLVERS 8
/* The DNS port: UDP and TCP to it, on any address, go to interlockd. */
#define DNS_PORT 53
/* Length of sun_path in struct sockaddr_un. */
#define UNIX_PATH_LEN 108

/* What a tagged TCP connect matching a rule does. */
enum verdict {
	VERDICT_REDIRECT = 0,
	VERDICT_DENY = 1,
	VERDICT_PASS = 2,
};

/* Why a tagged operation was refused; sent with every deny_event. */
enum deny_reason {
	DENY_TCP_RULE = 1,   /* a rule of the identity denied the TCP connect */
	DENY_UDP = 2,        /* UDP to (or, inbound, from) an address that is neither a resolver nor allowed */
	DENY_SOCKET = 3,     /* raw, packet or non-TCP/UDP inet socket */
	DENY_UNIX_PATH = 4,  /* connect to a denied unix socket path */
	DENY_NO_PROXY = 5,   /* no proxy (or DNS proxy) address configured for this family */
	DENY_SOCK_TYPE = 6,  /* connect on an inet socket that is neither stream nor datagram */
	DENY_BIND = 7,       /* bind to a non-loopback address no listen rule allows, or a SYN to such a listener */
	DENY_SOCKOPT = 8,    /* a socket option that sets IP options or IPv6 extension headers */
	DENY_SOURCE_ROUTE = 9, /* a packet carrying IPv4 options or an IPv6 routing header */
	EVENT_ACCEPT = 10,   /* not a refusal: a connection accepted on a listener a rule allows */
	DENY_PTRACE = 11,    /* ptrace of a task outside the caller's identity (bpf LSM) */
	DENY_CGROUP_MOVE = 12, /* cgroup.procs/threads of another identity opened for write, or CLONE_INTO_CGROUP (bpf LSM) */
	DENY_BPF = 13,       /* the bpf() system call (bpf LSM) */
};

/* An IP address as four 32-bit words in network byte order; IPv4 is stored
 * IPv4-mapped (::ffff:a.b.c.d) so that both families share one form. */
struct addr {
	__u32 w[4];
};

/* What the kernel knew about the task and destination at connect time. */
struct origin {
	struct addr dst;
	__u16 dst_port;  /* host byte order */
	__u16 family;    /* AF_INET or AF_INET6: the socket's family */
	__u32 pid;       /* tgid */
	__u32 uid;
	__u32 gid;
	__u32 identity;
	__u32 pad;
	__u64 cgroup_id;
	__u64 netns_cookie;
	__u64 time_ns;   /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
	char comm[16];
};

/* Key of a redirected TCP connection as the proxy sees it at accept. */
struct tuple {
	__u64 netns_cookie;
	struct addr local;   /* the agent socket's address */
	struct addr remote;  /* the proxy listener's address */
	__u16 local_port;    /* host byte order */
	__u16 remote_port;   /* host byte order */
	__u32 pad;
};

/* One intercept rule: (dst & mask) == addr and port_min <= port <= port_max. */
struct rule {
	struct addr addr;
	struct addr mask;
	__u16 port_min;
	__u16 port_max;
	__u32 verdict;  /* enum verdict */
};

struct rule_set {
	__u32 count;
	__u32 pad;
	struct rule rules[MAX_RULES];
};

struct resolver {
	struct addr addr;
	__u16 port;
	__u16 pad;
};

/* Global settings, rewritten by the loader on every Open. */
struct config {
	struct addr proxy4;   /* IPv4-mapped */
	struct addr proxy6;
	__u16 proxy4_port;    /* host byte order; 0 = none, tagged IPv4 TCP is refused */
	__u16 proxy6_port;    /* host byte order; 0 = none, tagged IPv6 TCP is refused */
	__u32 resolver_count;
	__u64 self_cgroup;    /* interlockd's cgroup: it and its descendants pass */
	struct resolver resolvers[MAX_RESOLVERS];
	struct addr dns4;     /* IPv4-mapped: interlockd's UDP DNS proxy */
	struct addr dns6;
	__u16 dns4_port;      /* host byte order; 0 = none, tagged IPv4 UDP DNS is refused */
	__u16 dns6_port;      /* host byte order; 0 = none, tagged IPv6 UDP DNS is refused */
	__u32 pad;
};

struct deny_event {
	struct origin origin;
	__u32 reason;    /* enum deny_reason */
	__u32 sock_type; /* SOCK_STREAM, SOCK_DGRAM, SOCK_RAW... */
	__u32 protocol;
	__u32 detail;    /* DENY_SOCKOPT: level << 16 | optname */
	char path[UNIX_PATH_LEN]; /* unix path for DENY_UNIX_PATH */
};

struct unix_path {
	char path[UNIX_PATH_LEN];
};

/* A unix socket path an identity may reach when its allow-list is on. */
struct unix_allow_key {
	__u32 identity;
	char path[UNIX_PATH_LEN];
};

/* Input and output of the verdict_probe test program. */
struct verdict_query {
	struct addr dst;
	__u16 port;     /* host byte order */
	__u16 udp;      /* 1: ask udp_allowed, 0: tcp_verdict, 2: is_dns */
	__u32 identity;
	__s32 result;   /* udp: 1 allowed, 0 refused; tcp: enum verdict; dns: 1 steered */
	__u32 pad;
};
