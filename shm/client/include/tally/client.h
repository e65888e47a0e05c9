/* tally client: report a workload's usage to the node agent (tallyd) through shared memory.
 *
 * Contract, for every function below:
 *  - never blocks on the agent, never fails the workload, never returns NULL from tally_open;
 *  - tally_add, tally_set, tally_record and tally_admit are the hot path: no system call, no lock, no allocation,
 *    no clock read, in any state (attached, no agent, attaching), safe from any number of threads at once (a
 *    thread's first call learns its thread id: its one system call);
 *  - with no agent, calls count in the client's own memory; a background thread of the client (started by
 *    tally_open) looks for the agent and attaches by itself when one appears, handing over what was counted, so
 *    totals are exact from the first call (events: the first 1,024, the rest counted as dropped);
 *  - fork() is safe: a child re-registers as its own process on its first call, its handles and counter ids stay
 *    valid, and it never writes into its parent's segment.
 *
 * The names here are a stable ABI: they are only ever added to. See docs/workload-integration.md for examples and
 * docs/shm-format.md for what lands in shared memory. Compiles as C11 and as C++. */
#ifndef TALLY_CLIENT_H
#define TALLY_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TALLY_CLIENT_ABI_VERSION 1

#if defined(__GNUC__)
#define TALLY_API __attribute__((visibility("default")))
#else
#define TALLY_API
#endif

typedef struct tally_client tally_client;

/* One key=value pair of a label set. Well-known keys: tenant, team, project, model, use_case, tool; any other
 * pair is kept as given. */
typedef struct {
  const char *key;
  const char *value;
} tally_label;

/* Cumulative counters. Totals are exact: they never depend on the event lanes having room. */
typedef enum {
  TALLY_TOKENS_IN = 0,
  TALLY_TOKENS_OUT = 1,
  TALLY_CACHED_TOKENS = 2,
  TALLY_REQUESTS = 3,
  TALLY_ERRORS = 4,
  TALLY_GPU_TIME_NS = 5,
  TALLY_TOOL_CALLS = 6,
  TALLY_BUILTIN_COUNTERS = 8, /* 7 is reserved */
  /* User-named counters: TALLY_USER_COUNTER_0 + i, as returned by tally_register_counter. */
  TALLY_USER_COUNTER_0 = 8,
  TALLY_COUNTER_LIMIT = 16, /* counters at or above this are ignored */
  TALLY_COUNTER_INVALID = 0xffff
} tally_counter;

/* Gauges: the last value set wins. */
typedef enum {
  TALLY_KV_CACHE_BYTES = 0,
  TALLY_CONTEXT_TOKENS = 1, /* context is a governed resource, not a private cache */
  TALLY_GAUGE_LIMIT = 8
} tally_gauge;

/* One finished request. status: 0 = success, anything else counts as an error. */
typedef struct {
  uint64_t tokens_in;
  uint64_t tokens_out;
  uint64_t ttft_ns;     /* time to first token */
  uint64_t duration_ns; /* whole request */
  uint64_t gpu_time_ns;
  uint32_t tool_calls;
  uint32_t status;
} tally_request;

/* TALLY_DEGRADE: serve, but cheaper (a smaller model, fewer tokens): the reason carries the hint. A client built
 * before it existed reads it as TALLY_DENY, the safe side. */
typedef enum { TALLY_ALLOW = 0, TALLY_THROTTLE = 1, TALLY_DENY = 2, TALLY_DEGRADE = 3 } tally_decision;

/* Why the agent decided what it did. */
typedef enum {
  TALLY_REASON_NONE = 0,
  TALLY_REASON_NO_AGENT = 1,        /* not attached: allowed, nothing is enforced */
  TALLY_REASON_LABELS_REFUSED = 2,  /* the agent's config forbids this process to claim these labels */
  TALLY_REASON_BUDGET = 3,          /* a budget's hard limit, or nothing left to grant (docs/budgets.md) */
  TALLY_REASON_POLICY = 4           /* the agent wrote a decision this client does not know */
} tally_reason;

/* A tally_admission's reason: the tally_reason in its low 8 bits; for TALLY_DEGRADE, the hint in the 16 above it:
 * the largest max_tokens a request should ask for (0: no cap, only "cheaper"). */
#define TALLY_REASON_CODE(reason) ((reason) & 0xffu)
#define TALLY_DEGRADE_MAX_TOKENS(reason) (((reason) >> 8) & 0xffffu)

typedef struct {
  tally_decision decision;
  uint32_t reason; /* a tally_reason */
} tally_admission;

/* Connects to the agent (socket: $TALLY_SOCKET, default /run/tally/tally.sock) and maps this client's segment.
 * `workload_name` is a display name only: the agent identifies the workload from the kernel (cgroup), never from
 * what the client claims. Waits for the agent's answer at most $TALLY_OPEN_TIMEOUT_MS (default 100 ms); an agent
 * that answers later is picked up by the client's background thread, which this starts. Never returns NULL (a
 * static no-op client when out of memory). */
TALLY_API tally_client *tally_open(const char *workload_name);

/* Stops the background thread and releases the segment. Other threads must have stopped using the client. NULL is
 * ignored. */
TALLY_API void tally_close(tally_client *client);

/* Interns a label set once and returns a small handle, or 0 (none) when the set is malformed or the table is full
 * (at most 248 bytes of "key=value" text per set). The same set returns the same handle. Works before an agent is
 * attached: handles stay valid across attach. Not for the hot path (takes a lock). */
TALLY_API uint32_t tally_intern(tally_client *client, const tally_label *labels, size_t n);

/* Registers a user-named counter (at most 31 bytes, [A-Za-z0-9_.]) once and returns its id, or
 * TALLY_COUNTER_INVALID when the name is malformed or all user counters are taken. The same name returns the same
 * id. Not for the hot path. */
TALLY_API tally_counter tally_register_counter(tally_client *client, const char *name);

/* Hot path. A `labels` of 0, an unknown handle or counter are no-ops. */
TALLY_API void tally_add(tally_client *client, uint32_t labels, tally_counter counter, uint64_t value);
TALLY_API void tally_set(tally_client *client, uint32_t labels, tally_gauge gauge, uint64_t value);
/* Adds the request to the counters (tokens in/out, requests, errors, GPU time, tool calls: always exact) and
 * queues it as an event for the agent's histograms (counted as dropped when this thread's lane is full). */
TALLY_API void tally_record(tally_client *client, uint32_t labels, const tally_request *request);
/* What the agent decided for this label set. TALLY_ALLOW with TALLY_REASON_NO_AGENT when not attached. */
TALLY_API tally_admission tally_admit(tally_client *client, uint32_t labels);

/* Allowances (docs/budgets.md): reserve before the work, commit what it really cost after. Hot path, like
 * tally_add: all in shared memory, no system call, no lock shared with other processes.
 * tally_reserve returns 1 when `amount` of `counter` is granted from the allowance the agent gave this label set,
 * 0 when it is refused (the budget is spent, or the agent has not topped the allowance up yet: try again after a
 * drain interval, or see tally_admit). 1 when no budget governs the label set and counter, or no agent is
 * attached: nothing is enforced then. */
TALLY_API int tally_reserve(tally_client *client, uint32_t labels, tally_counter counter, uint64_t amount);
/* Adds `used` to the counter (exactly, whatever was reserved) and gives back what was reserved and not used. A
 * `used` above `reserved` is counted in full and charged to the budget as overshoot. Call it once per granted
 * tally_reserve, with that reservation's amount; a process that dies between the two leaves nothing held: its
 * allowance goes back to the budget when the agent sees it exit. */
TALLY_API void tally_commit(tally_client *client, uint32_t labels, tally_counter counter, uint64_t reserved,
                            uint64_t used);

/* 1 when attached to a live segment of the agent, else 0 (not yet, or the agent quarantined the segment: the
 * background thread is registering again). Not for the hot path (takes a lock). */
TALLY_API int tally_attached(tally_client *client);

/* Events this client could not queue because a lane was full, or that found no room while not attached (their
 * counters are still exact). */
TALLY_API uint64_t tally_dropped(tally_client *client);

/* The last registration problem, as text (e.g. "tally: no agent at /run/tally/tally.sock: No such file or
 * directory"); "" when none. Valid until the next call from the same thread. */
TALLY_API const char *tally_last_error(tally_client *client);

#ifdef __cplusplus
}
#endif

#endif /* TALLY_CLIENT_H */
