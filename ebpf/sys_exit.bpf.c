// SPDX-License-Identifier: GPL-2.0
/* Hook: the raw tracepoint raw_syscalls:sys_exit, BTF-typed (tp_btf), fired when any syscall returns:
 *
 *   TRACE_EVENT_FN(sys_exit, TP_PROTO(struct pt_regs *regs, long ret), ...)   (include/trace/events/syscalls.h)
 *
 * FALLBACK ONLY, loaded on kernels without the sock:sock_send_length/sock_recv_length tracepoints (< 6.3, e.g.
 * Debian 12's 6.1); otherwise sock_msg_length.bpf.c counts socket bytes and this program is not loaded.
 * Counts socket bytes under the calling task's key for the send/recv family: the return value of recv, recvfrom,
 * recvmsg / send, sendto, sendmsg, and the sum of msg_len for recvmmsg/sendmmsg (first 64 messages). read/write on
 * sockets are not seen here (they are in rchar/wchar).
 *
 * Its cost: any program on sys_enter/sys_exit sets TIF_SYSCALL_TRACEPOINT on every task, so every syscall of the
 * node takes the tracing slow path and an indirect call into BPF, counted or not (docs/ebpf.md has the figures).
 * The syscall numbers of this architecture come from the loader (a table in .rodata), not from this file. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "tally_abi.h"
#include "tally_keys.bpf.h"
#include "tally_kernel_types.h"
#include "tally_maps.bpf.h"

/* Syscall number → enum tally_syscall_kind, set by the loader before load (then frozen). */
const volatile __u8 tally_syscall_kind[TALLY_MAX_SYSCALLS] = {};

/* struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; } on 64-bit: msg_len at 56, 64 bytes each. */
#define TALLY_MMSGHDR_SIZE 64
#define TALLY_MMSGHDR_MSG_LEN 56

/* Bytes moved by a sendmmsg/recvmmsg that returned `messages`: the kernel wrote each msg_len back to userspace. */
static __always_inline __u64 mmsg_bytes(unsigned long vector, long messages) {
  __u64 bytes = 0;
  for (int i = 0; i < TALLY_MAX_MMSG; ++i) {
    if (i >= messages) break;
    __u32 length = 0;
    if (bpf_probe_read_user(&length, sizeof(length),
                            (const void*)(vector + (unsigned long)i * TALLY_MMSGHDR_SIZE + TALLY_MMSGHDR_MSG_LEN)))
      break;
    bytes += length;
  }
  return bytes;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(tally_sys_exit, struct pt_regs___tally* regs, long ret) {
  if (ret <= 0) return 0;
  const long nr = TALLY_SYSCALL_NR(regs);
  if (nr < 0 || nr >= TALLY_MAX_SYSCALLS) return 0;
  const __u8 kind = tally_syscall_kind[nr];
  if (kind == TALLY_SYSCALL_NONE) return 0;

  struct tally_counters* counters = tally_counters_of(tally_key_of((void*)bpf_get_current_task_btf()));
  if (!counters) return 0;
  /* Per-CPU value and a program that cannot nest on its own CPU: plain adds are exact. */
  switch (kind) {
    case TALLY_SYSCALL_SOCK_RECV:
      counters->socket_rx_bytes += ret;
      break;
    case TALLY_SYSCALL_SOCK_SEND:
      counters->socket_tx_bytes += ret;
      break;
    case TALLY_SYSCALL_SOCK_RECVMMSG:
      counters->socket_rx_bytes += mmsg_bytes(TALLY_SYSCALL_ARG1(regs), ret);
      break;
    case TALLY_SYSCALL_SOCK_SENDMMSG:
      counters->socket_tx_bytes += mmsg_bytes(TALLY_SYSCALL_ARG1(regs), ret);
      break;
    default:
      break;
  }
  return 0;
}
