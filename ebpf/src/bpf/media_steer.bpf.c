// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
//
// media_steer: the XDP program of the media plane's AF_XDP backend.
//
// For each received frame: parse Ethernet (at most one 802.1Q/802.1ad tag), then IPv4 (options
// skipped by IHL, fragments passed) or IPv6 (fixed header only: any extension header is passed),
// then UDP. A UDP datagram whose destination port lies in [config.port_min, config.port_max] is
// redirected to the AF_XDP socket registered in `xsks` for the receiving queue; if that queue has
// no socket, bpf_redirect_map() returns its flags argument (XDP_PASS) and the kernel gets the
// packet. Everything else (ARP, ICMP, SIP, gRPC, other UDP, fragments, malformed frames) goes to
// the kernel untouched. Every outcome is counted in the per-CPU `stats` array, so each packet is
// counted exactly once.
//
// The userspace side (ebpf/src/lib.rs) writes `config` before it attaches the program, registers
// sockets in `xsks`, and sums `stats` over CPUs. The indices of `stats` are mirrored there: keep the
// two lists in the same order.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// The kernel's <linux/if_vlan.h> struct vlan_hdr and IP_MF/IP_OFFSET are not in the UAPI headers.
struct vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};

#define IPV4_MF 0x2000
#define IPV4_OFFSET 0x1fff
#define IPV6_NEXTHDR_FRAGMENT 44

// Queues beyond this never redirect (the lookup misses and the packet is passed).
#define MAX_QUEUES 64

// Host byte order; port_min <= port_max is checked by the loader before it writes the entry.
struct steer_config {
	__u16 port_min;
	__u16 port_max;
};

enum steer_stat {
	STAT_REDIRECTED = 0,      // redirected to the queue's AF_XDP socket
	STAT_PASSED_NO_XSK,       // media port, but no socket registered for the queue
	STAT_PASSED_NOT_UDP,      // not IPv4/IPv6, not UDP, or an IPv6 extension header
	STAT_PASSED_OTHER_PORT,   // UDP outside the media range
	STAT_PASSED_FRAGMENT,     // IPv4 fragment (MF or offset) or IPv6 fragment header
	STAT_MALFORMED,           // truncated header, wrong IP version or IHL < 5
	STAT_COUNT,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct steer_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline int count(__u32 stat, int action)
{
	__u64 *value = bpf_map_lookup_elem(&stats, &stat);

	if (value)
		*value += 1; // per-CPU slot: no other CPU writes it
	return action;
}

// Returns the destination port (host order) of a non-fragmented IPv4 or IPv6 UDP datagram, or -1
// with *stat set to the reason the packet is passed. The port is read right after its bounds check:
// handing the header pointer back to the caller lets clang recompute it from the variable IHL in a
// register the verifier has not seen checked.
static __always_inline int udp_dest_port(void *data, void *data_end, __u32 *stat)
{
	struct ethhdr *eth = data;
	void *l3;
	__u16 proto;

	if ((void *)(eth + 1) > data_end) {
		*stat = STAT_MALFORMED;
		return -1;
	}
	proto = eth->h_proto;
	l3 = eth + 1;

	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vlan = l3;

		if ((void *)(vlan + 1) > data_end) {
			*stat = STAT_MALFORMED;
			return -1;
		}
		proto = vlan->encapsulated_proto;
		l3 = vlan + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		struct udphdr *udp;
		__u32 ihl_bytes;

		if ((void *)(ip + 1) > data_end) {
			*stat = STAT_MALFORMED;
			return -1;
		}
		if (ip->version != 4 || ip->ihl < 5) {
			*stat = STAT_MALFORMED;
			return -1;
		}
		if (ip->frag_off & bpf_htons(IPV4_MF | IPV4_OFFSET)) {
			*stat = STAT_PASSED_FRAGMENT;
			return -1;
		}
		if (ip->protocol != IPPROTO_UDP) {
			*stat = STAT_PASSED_NOT_UDP;
			return -1;
		}
		ihl_bytes = ip->ihl * 4; // 20..60: a bounded variable offset the verifier tracks
		udp = l3 + ihl_bytes;
		if ((void *)(udp + 1) > data_end) {
			*stat = STAT_MALFORMED;
			return -1;
		}
		return bpf_ntohs(udp->dest);
	}

	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		struct udphdr *udp;

		if ((void *)(ip6 + 1) > data_end || ip6->version != 6) {
			*stat = STAT_MALFORMED;
			return -1;
		}
		if (ip6->nexthdr == IPV6_NEXTHDR_FRAGMENT) {
			*stat = STAT_PASSED_FRAGMENT;
			return -1;
		}
		if (ip6->nexthdr != IPPROTO_UDP) {
			*stat = STAT_PASSED_NOT_UDP;
			return -1;
		}
		udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) > data_end) {
			*stat = STAT_MALFORMED;
			return -1;
		}
		return bpf_ntohs(udp->dest);
	}

	*stat = STAT_PASSED_NOT_UDP;
	return -1;
}

SEC("xdp")
int media_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct steer_config *cfg;
	__u32 zero = 0;
	__u32 stat = STAT_PASSED_NOT_UDP;
	int port;
	long action;

	port = udp_dest_port(data, data_end, &stat);
	if (port < 0)
		return count(stat, XDP_PASS);

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return count(STAT_PASSED_OTHER_PORT, XDP_PASS);
	if (port < cfg->port_min || port > cfg->port_max)
		return count(STAT_PASSED_OTHER_PORT, XDP_PASS);

	// An empty slot (no socket for this queue, or a queue index >= MAX_QUEUES) yields the flags
	// argument, XDP_PASS: the kernel's own socket, if any, then gets the packet.
	action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	if (action == XDP_REDIRECT)
		return count(STAT_REDIRECTED, XDP_REDIRECT);
	return count(STAT_PASSED_NO_XSK, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
