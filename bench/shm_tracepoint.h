/* The LTTng-UST baseline for bench/shm_bench.cpp: one tracepoint carrying the same fields as a tally_record. */
#undef LTTNG_UST_TRACEPOINT_PROVIDER
#define LTTNG_UST_TRACEPOINT_PROVIDER tally_bench

#undef LTTNG_UST_TRACEPOINT_INCLUDE
#define LTTNG_UST_TRACEPOINT_INCLUDE "shm_tracepoint.h"

#if !defined(TALLY_SHM_TRACEPOINT_H) || defined(LTTNG_UST_TRACEPOINT_HEADER_MULTI_READ)
#define TALLY_SHM_TRACEPOINT_H

#include <lttng/tracepoint.h>
#include <stdint.h>

LTTNG_UST_TRACEPOINT_EVENT(tally_bench, request,
    LTTNG_UST_TP_ARGS(uint32_t, labels, uint64_t, tokens_in, uint64_t, tokens_out, uint64_t, ttft_ns,
                      uint64_t, duration_ns, uint64_t, gpu_time_ns),
    LTTNG_UST_TP_FIELDS(
        lttng_ust_field_integer(uint32_t, labels, labels)
        lttng_ust_field_integer(uint64_t, tokens_in, tokens_in)
        lttng_ust_field_integer(uint64_t, tokens_out, tokens_out)
        lttng_ust_field_integer(uint64_t, ttft_ns, ttft_ns)
        lttng_ust_field_integer(uint64_t, duration_ns, duration_ns)
        lttng_ust_field_integer(uint64_t, gpu_time_ns, gpu_time_ns)))

#endif

#include <lttng/tracepoint-event.h>
