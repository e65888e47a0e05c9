// SPDX-License-Identifier: GPL-2.0
/* Hooks: the tracepoints sock:sock_send_length and sock:sock_recv_length (event class sock_msg_length, Linux 6.3+),
 * BTF-typed (tp_btf), fired in sock_sendmsg() and sock_recvmsg() after the protocol's sendmsg/recvmsg returned:
 *
 *   DECLARE_EVENT_CLASS(sock_msg_length, TP_PROTO(struct sock *sk, int ret, int flags), ...)
 *   (include/trace/events/sock.h; ret is the byte count on success, a negative errno otherwise)
 *
 * Counts socket bytes under the key of the calling task (its cgroup v2 id, or its process in the root cgroup):
 * every byte a socket sent or received through send, sendto, sendmsg, sendmmsg (each message), recv, recvfrom,
 * recvmsg, recvmmsg (each message), and also read, write, readv, writev on a socket and sendfile/splice into one,
 * which all go through sock_sendmsg/sock_recvmsg.
 * So socket_*_bytes is every byte that crossed a socket, whichever call moved it; io_*_bytes (rchar/wchar) count
 * the read/write-family part of the same bytes again, as /proc/PID/io does.
 *
 * Why these and not raw_syscalls:sys_exit: they fire only on socket operations, so a node's other syscalls pay
 * nothing. Kernels without them (< 6.3) load sys_exit.bpf.c instead. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "tally_abi.h"
#include "tally_keys.bpf.h"
#include "tally_kernel_types.h"
#include "tally_maps.bpf.h"

/* include/linux/socket.h: a receive that leaves the data queued; it is read (and counted) again later. */
#define TALLY_MSG_PEEK 2

/* Plain adds: the counters are per CPU, a tracing program does not nest on its own CPU, and the cgroup_skb programs
 * that may interrupt us in softirq update other fields. */
SEC("tp_btf/sock_send_length")
int BPF_PROG(tally_sock_send_length, const void* sk, int ret, int flags) {
  if (ret <= 0) return 0;
  struct tally_counters* counters = tally_counters_of(tally_key_of((void*)bpf_get_current_task_btf()));
  if (counters) counters->socket_tx_bytes += ret;
  return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(tally_sock_recv_length, const void* sk, int ret, int flags) {
  if (ret <= 0 || (flags & TALLY_MSG_PEEK)) return 0;
  struct tally_counters* counters = tally_counters_of(tally_key_of((void*)bpf_get_current_task_btf()));
  if (counters) counters->socket_rx_bytes += ret;
  return 0;
}
