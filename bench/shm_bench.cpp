// What it costs a workload to report usage, and what it costs the agent to drain it.
//
// Compares, in one run on one machine:
//  - tally_add (1 and 2 threads on the same counter of the same label set) against a relaxed
//    std::atomic<uint64_t>::fetch_add on an uncontended line with as many threads (target: <= 1.0x), and against a
//    shared atomic that two threads hit (what per-thread shards avoid);
//  - tally_record (1 and 2 threads) against a 64-byte record pushed into a single-writer ring with as many threads
//    (target: <= 2.0x);
//  - tally_reserve + tally_commit on a governed label set and counter (1 thread; a grant too large ever to refuse)
//    against the same relaxed fetch_add (target: <= 3.0x: two CAS loops and an atomic add on the label set's
//    BudgetEntry, shared by every thread of the process, plus the counter). Targets allow 5 % for noise;
//  - tally_record against the same event as a statsd line over UDP loopback (target: 100x cheaper) and as an
//    LTTng-UST tracepoint with a live session (target: 10x cheaper). Start the session before the run:
//      lttng-sessiond --daemonize; lttng create tally-bench --output=/tmp/tally-bench-trace
//      lttng enable-event -u 'tally_bench:*'; lttng start
//    (the summary says whether the tracepoint was enabled; without a session it costs a branch and says so);
//  - the agent's drain with histograms on one core, in events/s (target: >= 30M).
// Every benchmark runs 5 repetitions; the summary table printed last uses the medians.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <string_view>
#include <thread>

#include "agent/base/histogram.hpp"
#include "bench/median_reporter.hpp"
#include "shm/segments/registration_server.hpp"
#include "shm/segments/segment_file.hpp"
#include "shm/segments/segment_reader.hpp"
#include "tally/client.h"

extern "C" int tally_bench_lttng_available(void);
extern "C" void tally_bench_lttng_request(std::uint32_t labels, std::uint64_t tokens_in, std::uint64_t tokens_out,
                                          std::uint64_t ttft_ns, std::uint64_t duration_ns, std::uint64_t gpu_time_ns);
#ifdef TALLY_BENCH_LTTNG
#include "shm_tracepoint.h"
#endif

namespace {

using namespace tally;

// ---- one attached client for the whole run, registered with an in-process server in a temp dir -------------

// Lanes as the agent makes them by default, and the baseline ring the same size: the same memory footprint on both
// sides (a lane far larger than L2 would time cache misses, not the code).
constexpr std::uint32_t kLaneRecords = shm::format::kDefaultLaneRecords;

struct BenchAgent {
  std::filesystem::path dir;
  std::unique_ptr<shm::RegistrationServer> server;
  std::filesystem::path segment_path, control_path;
  tally_client* client = nullptr;
  std::uint32_t labels = 0;
  shm::MappedFile segment, control;

  BenchAgent() {
    // On a tmpfs, as /run is: shared file pages on a disk file system are written back and write-protected again
    // now and then, and the next store faults: that would time the page cache, not the client.
    char tmpl[] = "/dev/shm/tally-bench-XXXXXX";
    dir = ::mkdtemp(tmpl);
    shm::RegistrationServer::Options options;
    options.socket_path = dir / "tally.sock";
    options.segment_dir = dir / "segments";
    auto s = shm::RegistrationServer::listen(options, [this](const shm::Registration& r) -> Result<void> {
      segment_path = r.segment_path;
      control_path = r.control_path;
      return {};
    });
    if (!s) throw std::runtime_error(s.error().message);
    server = std::move(*s);
    ::setenv("TALLY_SOCKET", options.socket_path.c_str(), 1);
    ::setenv("TALLY_LANE_RECORDS", std::to_string(kLaneRecords).c_str(), 1);
    std::atomic<bool> done{false};
    std::thread serve([&] {
      while (!done) {
        pollfd p{server->fd(), POLLIN, 0};
        if (::poll(&p, 1, 5) > 0) server->on_readable();
      }
    });
    client = tally_open("bench");
    done = true;
    serve.join();
    if (!tally_attached(client)) throw std::runtime_error("bench client did not attach");
    const tally_label l[] = {{"tenant", "acme"}, {"model", "llama"}};
    labels = tally_intern(client, l, 2);
    auto mapped = shm::MappedFile::open(segment_path, sizeof(shm::format::Header), std::uint64_t{1} << 34);
    if (!mapped) throw std::runtime_error(mapped.error().message);
    segment = std::move(*mapped);
    auto mapped_control = shm::MappedFile::open(control_path, sizeof(shm::format::ControlHeader), 1u << 30);
    if (!mapped_control) throw std::runtime_error(mapped_control.error().message);
    control = std::move(*mapped_control);
  }
  ~BenchAgent() {
    tally_close(client);
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  // Plays the agent's part for the lanes: marks everything published as consumed, so records keep taking the
  // real path (not the lane-full path).
  void consume_lanes() {
    auto* h = reinterpret_cast<shm::format::Header*>(segment.bytes().data());
    const std::uint32_t used = shm::format::load_acquire(h->slots_used);
    for (std::uint32_t s = 0; s < used; ++s) {
      const auto layout = shm::format::compute_layout(h->label_capacity, h->slot_count, h->lane_records, h->version);
      auto* slot = reinterpret_cast<shm::format::SlotHeader*>(segment.bytes().data() + layout.slot_header(s));
      shm::format::store_release(slot->tail, shm::format::load_acquire(slot->head));
    }
  }
};

BenchAgent& agent() {
  static BenchAgent a;
  return a;
}

tally_request sample_request(std::uint64_t i) {
  tally_request r{};
  r.tokens_in = 100 + (i & 1023);
  r.tokens_out = 50 + (i & 511);
  r.ttft_ns = 1'000'000 + (i & 0xffff);
  r.duration_ns = 9'000'000 + (i & 0xfffff);
  r.gpu_time_ns = 4'000'000 + (i & 0xfff);
  r.tool_calls = static_cast<std::uint32_t>(i & 3);
  return r;
}

// ---- baselines ------------------------------------------------------------------------------------------------

struct alignas(64) PaddedAtomic {
  std::atomic<std::uint64_t> value{0};
};
PaddedAtomic g_per_thread[8];
PaddedAtomic g_shared;

void BM_AtomicFetchAdd(benchmark::State& state) {  // uncontended: each thread its own line
  auto& a = g_per_thread[state.thread_index()].value;
  for (auto _ : state) a.fetch_add(1, std::memory_order_relaxed);
}
BENCHMARK(BM_AtomicFetchAdd)->Threads(1)->Threads(2)->UseRealTime();

void BM_AtomicSharedFetchAdd(benchmark::State& state) {  // what a single shared counter costs two threads
  for (auto _ : state) g_shared.value.fetch_add(1, std::memory_order_relaxed);
}
BENCHMARK(BM_AtomicSharedFetchAdd)->Threads(2)->UseRealTime();

// The floor for an event: a 64-byte record pushed into a single-writer ring through a call, the way any such ring's
// API does it (an SPSC queue, a trace buffer): check for room against a cached tail, write the record, publish the
// head with one release store. The ring's state lives in memory, as it must behind an API; the ring is as large
// as a tally lane. tally_record's target is <= 2x this. The push is opaque to the optimiser at its call site
// (noipa), as tally_record is behind its library boundary: the compiler must not specialise the baseline for this
// loop's constant arguments when it cannot do so for the code under test.
struct alignas(64) RingRecord {
  tally_request request;
  std::uint32_t labels;
};
static_assert(sizeof(RingRecord) == 64);
struct alignas(64) SingleWriterRing {
  RingRecord records[kLaneRecords];
  std::uint64_t head = 0;
  std::uint64_t cached_tail = 0;
  alignas(64) std::atomic<std::uint64_t> published_head{0};
  alignas(64) std::atomic<std::uint64_t> tail{0};  // the reader's
};
SingleWriterRing g_rings[2];

[[gnu::noipa]] bool ring_push(SingleWriterRing& ring, std::uint32_t labels, const tally_request& request) {
  const std::uint64_t head = ring.head;
  if (head - ring.cached_tail >= kLaneRecords) {
    ring.cached_tail = ring.tail.load(std::memory_order_acquire);
    if (head - ring.cached_tail >= kLaneRecords) return false;
  }
  RingRecord& record = ring.records[head & (kLaneRecords - 1)];
  record.request = request;
  record.labels = labels;
  ring.head = head + 1;
  ring.published_head.store(head + 1, std::memory_order_release);
  return true;
}

void BM_RingRecord64(benchmark::State& state) {
  SingleWriterRing& ring = g_rings[state.thread_index()];
  const tally_request r = sample_request(static_cast<std::uint64_t>(state.thread_index()) * 7919);
  std::uint64_t i = 0;
  for (auto _ : state) {
    ring_push(ring, 1, r);
    if ((++i & (kLaneRecords / 2 - 1)) == 0) ring.tail.store(ring.head, std::memory_order_release);  // as tally's
  }
}
BENCHMARK(BM_RingRecord64)->Threads(1)->Threads(2)->UseRealTime();

// ---- tally ------------------------------------------------------------------------------------------------

void BM_TallyAdd(benchmark::State& state) {  // same counter, same label set, from every thread
  BenchAgent& a = agent();
  for (auto _ : state) tally_add(a.client, a.labels, TALLY_TOKENS_IN, 1);
}
BENCHMARK(BM_TallyAdd)->Threads(1)->Threads(2)->UseRealTime();

void BM_TallyRecord(benchmark::State& state) {
  BenchAgent& a = agent();
  const tally_request r = sample_request(static_cast<std::uint64_t>(state.thread_index()) * 7919);
  std::uint64_t i = 0;
  for (auto _ : state) {
    tally_record(a.client, a.labels, &r);
    if ((++i & (kLaneRecords / 2 - 1)) == 0) a.consume_lanes();  // every half lane: it never fills up
  }
  state.counters["dropped"] = static_cast<double>(tally_dropped(a.client));
}
BENCHMARK(BM_TallyRecord)->Threads(1)->Threads(2)->UseRealTime();

// A request's budget, the way a server holds one: reserve its max_tokens before, commit the tokens it produced
// after. Governed (the CAS loops run), with a grant the run can never spend: a refusal would time the cheap path.
void BM_TallyReserveCommit(benchmark::State& state) {
  BenchAgent& a = agent();
  shm::set_allowance(a.control, a.labels,
                     shm::format::allowance_word(TALLY_TOKENS_OUT, shm::format::kAllowanceAmountMask));
  std::uint64_t refused = 0;
  for (auto _ : state) {
    if (tally_reserve(a.client, a.labels, TALLY_TOKENS_OUT, 512) != 0) {
      tally_commit(a.client, a.labels, TALLY_TOKENS_OUT, 512, 300);
    } else {
      ++refused;
    }
  }
  state.counters["refused"] = static_cast<double>(refused);
}
BENCHMARK(BM_TallyReserveCommit)->Threads(1)->Threads(2)->UseRealTime();

// ---- heavier baselines --------------------------------------------------------------------------------------

void BM_StatsdUdpSend(benchmark::State& state) {
  const int receiver = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(receiver, reinterpret_cast<sockaddr*>(&address), sizeof address);
  socklen_t length = sizeof address;
  ::getsockname(receiver, reinterpret_cast<sockaddr*>(&address), &length);
  const int sender = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ::connect(sender, reinterpret_cast<sockaddr*>(&address), sizeof address);
  char line[256];
  std::uint64_t i = 0;
  for (auto _ : state) {
    const tally_request r = sample_request(i++);
    const int n = std::snprintf(line, sizeof line,
                                "llm.request:1|c|#tenant:acme,model:llama,tokens_in:%lu,tokens_out:%lu,ttft_ns:%lu,"
                                "duration_ns:%lu,gpu_time_ns:%lu",
                                r.tokens_in, r.tokens_out, r.ttft_ns, r.duration_ns, r.gpu_time_ns);
    benchmark::DoNotOptimize(::send(sender, line, static_cast<std::size_t>(n), MSG_DONTWAIT));
    if ((i & 255) == 0) {  // keep the receive buffer from filling (a full buffer makes send fail fast)
      char sink[512];
      while (::recv(receiver, sink, sizeof sink, MSG_DONTWAIT) > 0) {
      }
    }
  }
  ::close(sender);
  ::close(receiver);
}
BENCHMARK(BM_StatsdUdpSend)->UseRealTime();

void BM_LttngTracepoint(benchmark::State& state) {
  std::uint64_t i = 0;
  for (auto _ : state) {
    const tally_request r = sample_request(i++);
    tally_bench_lttng_request(1, r.tokens_in, r.tokens_out, r.ttft_ns, r.duration_ns, r.gpu_time_ns);
  }
}
BENCHMARK(BM_LttngTracepoint)->UseRealTime();

// ---- the agent's drain ------------------------------------------------------------------------------------------

// One segment, one lane of 65536 records over 8 label sets: drain them all and fold them into histograms.
void BM_AgentDrain(benchmark::State& state) {
  constexpr std::uint32_t kRecords = 65536, kLabels = 8;
  const shm::format::Layout l = shm::format::compute_layout(16, 1, kRecords);
  std::vector<std::byte> storage(l.segment_size + 64);
  auto* base = reinterpret_cast<std::byte*>((reinterpret_cast<std::uintptr_t>(storage.data()) + 63) & ~std::uintptr_t{63});
  auto* h = reinterpret_cast<shm::format::Header*>(base);
  *h = shm::format::Header{};
  shm::format::init_header(*h, 16, 1, kRecords);
  h->magic = shm::format::kMagic;
  auto* entries = reinterpret_cast<shm::format::LabelEntry*>(base + l.labels_offset);
  for (std::uint32_t k = 1; k <= kLabels; ++k) {
    const std::string text = "tenant=t" + std::to_string(k);
    std::memcpy(entries[k].text, text.data(), text.size());
    entries[k].length = static_cast<std::uint32_t>(text.size());
    entries[k].committed = 1;
  }
  h->label_count = kLabels + 1;
  h->slots_used = 1;
  auto* slot = reinterpret_cast<shm::format::SlotHeader*>(base + l.slot_header(0));
  auto* records = reinterpret_cast<shm::format::Record*>(base + l.slot_records(0));
  auto reader = shm::SegmentReader::attach({base, l.segment_size});
  if (!reader) {
    state.SkipWithError(reader.error().message.c_str());
    return;
  }
  std::vector<std::array<tally::ExponentialHistogram, 4>> histograms(kLabels + 1);
  std::vector<shm::RequestEvent> events;
  events.reserve(kRecords);
  std::uint64_t head = 0, drained = 0;
  for (auto _ : state) {
    state.PauseTiming();  // the producer's part: publish a full lane
    for (std::uint32_t i = 0; i < kRecords; ++i) {
      const std::uint64_t seq = head + i;
      const tally_request r = sample_request(seq * 2654435761u);
      shm::format::Record& rec = records[seq & (kRecords - 1)];
      rec.labels = 1 + static_cast<std::uint32_t>(seq % kLabels);
      rec.tokens_in = r.tokens_in;
      rec.tokens_out = r.tokens_out;
      rec.ttft_ns = r.ttft_ns;
      rec.duration_ns = r.duration_ns;
      rec.gpu_time_ns = r.gpu_time_ns;
      rec.commit = static_cast<std::uint32_t>(seq + 1);
    }
    head += kRecords;
    slot->head = head;
    state.ResumeTiming();
    events.clear();
    if (!reader->drain(events)) {
      state.SkipWithError("drain failed");
      return;
    }
    for (const auto& e : events) {
      auto& tails = histograms[e.labels];
      tails[0].record(e.ttft_ns);
      tails[1].record(e.duration_ns);
      tails[2].record(e.tokens_in + e.tokens_out);
      tails[3].record(e.gpu_time_ns);
    }
    drained += events.size();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(drained));
  state.counters["events_per_s"] =
      benchmark::Counter(static_cast<double>(drained), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_AgentDrain)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> args(argv, argv + argc);
  // Defaults, unless the command line says otherwise (a later flag would win over the caller's).
  std::string repetitions = "--benchmark_repetitions=5";
  std::string aggregates = "--benchmark_report_aggregates_only=true";
  const auto given = [&](std::string_view flag) {
    return std::any_of(argv + 1, argv + argc, [&](const char* a) { return std::string_view(a).starts_with(flag); });
  };
  if (!given("--benchmark_repetitions=")) args.push_back(repetitions.data());
  if (!given("--benchmark_report_aggregates_only")) args.push_back(aggregates.data());
  int count = static_cast<int>(args.size());
  benchmark::Initialize(&count, args.data());
  bench::MedianReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);

  const auto time = [&](std::string_view name) {
    const bench::Median* median = reporter.find(name);
    return median ? median->real_ns : 0.0;
  };
  const double atomic1 = time("BM_AtomicFetchAdd/real_time/threads:1");
  const double atomic2 = time("BM_AtomicFetchAdd/real_time/threads:2");
  const double shared2 = time("BM_AtomicSharedFetchAdd/real_time/threads:2");
  const double add1 = time("BM_TallyAdd/real_time/threads:1");
  const double add2 = time("BM_TallyAdd/real_time/threads:2");
  const double rec1 = time("BM_TallyRecord/real_time/threads:1");
  const double rec2 = time("BM_TallyRecord/real_time/threads:2");
  const double ring1 = time("BM_RingRecord64/real_time/threads:1");
  const double ring2 = time("BM_RingRecord64/real_time/threads:2");
  const double budget1 = time("BM_TallyReserveCommit/real_time/threads:1");
  const double udp = time("BM_StatsdUdpSend");
  const double lttng = time("BM_LttngTracepoint");
  const bench::Median* drain = reporter.find("BM_AgentDrain");
  const double events_per_s = drain && drain->counters.contains("events_per_s") ? drain->counters.at("events_per_s") : 0;
  bool lttng_live = false;
#ifdef TALLY_BENCH_LTTNG
  lttng_live = lttng_ust_tracepoint_enabled(tally_bench, request);
#endif
  auto row = [](const char* what, double ns, const std::string& ratio, const char* target, bool ok) {
    std::printf("%-44s %10.2f ns  %-22s %-14s %s\n", what, ns, ratio.c_str(), target, ok ? "ok" : "MISSED");
  };
  auto x = [](double a, double b) { return b > 0 ? fmt::format("{:.2f}x atomic", a / b) : std::string("-"); };
  std::printf("\nSummary (medians of the repetitions, 5 unless told; per operation, per thread; 2-thread rows against "
              "2-thread baselines)\n");
  std::printf("%-44s %13s  %-22s %-14s %s\n", "benchmark", "time", "ratio", "target", "");
  row("atomic fetch_add, uncontended, 1 thread", atomic1, "1.00x (baseline)", "", true);
  row("atomic fetch_add, uncontended, 2 threads", atomic2, x(atomic2, atomic1), "", true);
  row("atomic fetch_add, one shared line, 2 threads", shared2, x(shared2, atomic1), "", true);
  // The targets, each against its baseline with as many threads (medians; 5 % allowed for noise).
  auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  row("tally_add, 1 thread", add1, x(add1, atomic1), "<= 1.0x", ratio(add1, atomic1) <= 1.05);
  row("tally_add, 2 threads, same counter+labels", add2, x(add2, atomic2), "<= 1.0x", ratio(add2, atomic2) <= 1.05);
  row("64-byte single-writer ring record, 1 thread", ring1, x(ring1, atomic1), "", true);
  row("64-byte single-writer ring record, 2 threads", ring2, x(ring2, atomic2), "", true);
  row("tally_record, 1 thread", rec1, fmt::format("{:.2f}x ring record", ratio(rec1, ring1)), "<= 2.0x",
      ratio(rec1, ring1) <= 2.1);
  row("tally_record, 2 threads", rec2, fmt::format("{:.2f}x ring record", ratio(rec2, ring2)), "<= 2.0x",
      ratio(rec2, ring2) <= 2.1);
  row("tally_reserve + tally_commit, 1 thread", budget1, x(budget1, atomic1), "<= 3.0x",
      ratio(budget1, atomic1) <= 3.15);
  row("statsd line over UDP loopback", udp, fmt::format("{:.0f}x tally_record", udp / rec1), ">= 100x",
      udp >= 100 * rec1);
  row(lttng_live ? "LTTng-UST tracepoint, live session" : "LTTng-UST tracepoint, NO SESSION (disabled)", lttng,
      fmt::format("{:.1f}x tally_record", lttng / rec1), ">= 10x", lttng >= 10 * rec1);
  std::printf("%-44s %10.1f M events/s (one core, histograms included)   target >= 30   %s\n", "agent drain",
              events_per_s / 1e6, events_per_s >= 30e6 ? "ok" : "MISSED");
  benchmark::Shutdown();
  return 0;
}
