// SPDX-License-Identifier: GPL-2.0
/* Hook: cgroup_skb ingress and egress (BPF_PROG_TYPE_CGROUP_SKB, BPF_CGROUP_INET_INGRESS / _EGRESS), attached with
 * BPF_F_ALLOW_MULTI to the root of the cgroup v2 hierarchy, so it runs for every IPv4/IPv6 packet a socket of any
 * cgroup receives (sk_filter) or sends (ip_finish_output):
 *
 *   int prog(struct __sk_buff *skb)   -- returns 1 to let the packet pass; tally never drops
 *
 * Counts skb->len (the IP packet, headers included) against the cgroup of the socket the packet belongs to
 * (bpf_skb_cgroup_id: the cgroup the socket was created in), which is right even in softirq context. The socket
 * is all these programs know, not the process: sockets of the root cgroup's processes are counted under the root
 * cgroup's id, not under process keys as the programs that see the task do. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "tally_abi.h"
#include "tally_maps.bpf.h"

SEC("cgroup_skb/ingress")
int tally_skb_ingress(struct __sk_buff* skb) {
  struct tally_counters* counters = tally_counters_of(bpf_skb_cgroup_id(skb));
  /* Atomic: a softirq receive may interrupt a process-context send that updates this CPU's copy. */
  if (counters) __sync_fetch_and_add(&counters->net_rx_bytes, skb->len);
  return 1;
}

SEC("cgroup_skb/egress")
int tally_skb_egress(struct __sk_buff* skb) {
  struct tally_counters* counters = tally_counters_of(bpf_skb_cgroup_id(skb));
  if (counters) __sync_fetch_and_add(&counters->net_tx_bytes, skb->len);
  return 1;
}
