#pragma once
// A thin C++ layer over tally/client.h: RAII ownership of the client and label sets built from initializer
// lists. Same contract as the C API: nothing here throws, blocks on the agent or fails the workload.

#include <cstdint>
#include <initializer_list>
#include <string_view>
#include <utility>

#include "tally/client.h"

namespace tally {

struct Request : tally_request {
  Request() : tally_request{} {}
};

class Client {
 public:
  explicit Client(const char* workload_name) : client_(tally_open(workload_name)) {}
  ~Client() { tally_close(client_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  Client(Client&& other) noexcept : client_(std::exchange(other.client_, nullptr)) {}
  Client& operator=(Client&& other) noexcept {
    if (this != &other) {
      tally_close(client_);
      client_ = std::exchange(other.client_, nullptr);
    }
    return *this;
  }

  // Interns {{"tenant", "acme"}, {"model", "llama-70b"}}: returns a handle for the calls below (0 = none).
  std::uint32_t intern(std::initializer_list<tally_label> labels) {
    return tally_intern(client_, labels.begin(), labels.size());
  }
  tally_counter counter(const char* name) { return tally_register_counter(client_, name); }

  void add(std::uint32_t labels, tally_counter counter, std::uint64_t value) {
    tally_add(client_, labels, counter, value);
  }
  void set(std::uint32_t labels, tally_gauge gauge, std::uint64_t value) { tally_set(client_, labels, gauge, value); }
  void record(std::uint32_t labels, const tally_request& request) { tally_record(client_, labels, &request); }
  tally_admission admit(std::uint32_t labels) { return tally_admit(client_, labels); }
  // Allowances: reserve before the work (false: refused, the budget is spent for now), commit what it cost after.
  bool reserve(std::uint32_t labels, tally_counter counter, std::uint64_t amount) {
    return tally_reserve(client_, labels, counter, amount) != 0;
  }
  void commit(std::uint32_t labels, tally_counter counter, std::uint64_t reserved, std::uint64_t used) {
    tally_commit(client_, labels, counter, reserved, used);
  }

  bool attached() { return tally_attached(client_) != 0; }
  std::uint64_t dropped() { return tally_dropped(client_); }
  std::string_view last_error() { return tally_last_error(client_); }
  tally_client* native() const { return client_; }

 private:
  tally_client* client_;
};

}  // namespace tally
