/* Instantiates the LTTng-UST tracepoint provider of bench/shm_tracepoint.h (when LTTng-UST is available), and a
 * plain function the benchmark calls either way. */
#include <stdint.h>

#ifdef TALLY_BENCH_LTTNG
#define LTTNG_UST_TRACEPOINT_CREATE_PROBES
#define LTTNG_UST_TRACEPOINT_DEFINE
#include "shm_tracepoint.h"
#endif

int tally_bench_lttng_available(void) {
#ifdef TALLY_BENCH_LTTNG
  return 1;
#else
  return 0;
#endif
}

void tally_bench_lttng_request(uint32_t labels, uint64_t tokens_in, uint64_t tokens_out, uint64_t ttft_ns,
                               uint64_t duration_ns, uint64_t gpu_time_ns) {
#ifdef TALLY_BENCH_LTTNG
  lttng_ust_tracepoint(tally_bench, request, labels, tokens_in, tokens_out, ttft_ns, duration_ns, gpu_time_ns);
#else
  (void)labels; (void)tokens_in; (void)tokens_out; (void)ttft_ns; (void)duration_ns; (void)gpu_time_ns;
#endif
}
