#include "agent/tallyd/event_loop.hpp"

#include <csignal>
#include <algorithm>
#include <cstring>

namespace tally::agent {
namespace {

struct PeriodicState {
  std::uint64_t period_us;
  std::function<void()> callback;
};

// The callbacks are owned by their event source: sd-event calls the destroy callback when the source goes away.
template <typename State>
void destroy_state(void* userdata) {
  delete static_cast<State*>(userdata);
}

Error errno_error(int negative_errno, const char* what) {
  return make_error(ErrorCode::io, "{}: {}", what, std::strerror(-negative_errno));
}

}  // namespace

Result<std::unique_ptr<EventLoop>> EventLoop::create() {
  sd_event* event = nullptr;
  if (int r = sd_event_new(&event); r < 0) return errno_error(r, "sd_event_new");
  std::unique_ptr<EventLoop> loop(new EventLoop(event));
  // Returns > 0 only when the service manager asked this process for keep-alives.
  int r = sd_event_set_watchdog(event, 1);
  if (r < 0) return errno_error(r, "sd_event_set_watchdog");
  loop->watchdog_ = r > 0;
  return loop;
}

EventLoop::~EventLoop() { sd_event_unref(event_); }

Result<EventSource> EventLoop::add_periodic(std::chrono::microseconds period, std::chrono::microseconds accuracy,
                                            std::function<void()> callback) {
  auto* state = new PeriodicState{static_cast<std::uint64_t>(period.count()), std::move(callback)};
  auto handler = [](sd_event_source* source, std::uint64_t usec, void* userdata) -> int {
    auto* s = static_cast<PeriodicState*>(userdata);
    // Next deadline from the previous one, not from now, so the period does not drift.
    sd_event_source_set_time(source, usec + s->period_us);
    sd_event_source_set_enabled(source, SD_EVENT_ON);
    s->callback();
    return 0;
  };
  sd_event_source* source = nullptr;
  // An accuracy of 0 is sd-event's default (250 ms): at least 1 µs asks for what we say.
  const auto slack = static_cast<std::uint64_t>(std::max<std::int64_t>(accuracy.count(), 1));
  int r = sd_event_add_time_relative(event_, &source, CLOCK_MONOTONIC, state->period_us, slack, handler, state);
  if (r < 0) {
    delete state;
    return errno_error(r, "sd_event_add_time_relative");
  }
  sd_event_source_set_destroy_callback(source, destroy_state<PeriodicState>);
  sd_event_source_set_enabled(source, SD_EVENT_ON);
  return EventSource(source);
}

void EventLoop::set_periodic_running(sd_event_source* timer, bool running) {
  if (!running) {
    sd_event_source_set_enabled(timer, SD_EVENT_OFF);
    return;
  }
  int enabled = SD_EVENT_OFF;
  if (sd_event_source_get_enabled(timer, &enabled) >= 0 && enabled != SD_EVENT_OFF) return;
  // From now, not from the last deadline: a paused timer does not fire a burst to catch up.
  const auto* state = static_cast<const PeriodicState*>(sd_event_source_get_userdata(timer));
  sd_event_source_set_time_relative(timer, state->period_us);
  sd_event_source_set_enabled(timer, SD_EVENT_ON);
}

Result<EventSource> EventLoop::add_oneshot(std::chrono::microseconds accuracy, std::function<void()> callback) {
  auto* state = new std::function<void()>(std::move(callback));
  auto handler = [](sd_event_source*, std::uint64_t, void* userdata) -> int {
    (*static_cast<std::function<void()>*>(userdata))();
    return 0;
  };
  sd_event_source* source = nullptr;
  const auto slack = static_cast<std::uint64_t>(std::max<std::int64_t>(accuracy.count(), 1));
  if (int r = sd_event_add_time_relative(event_, &source, CLOCK_MONOTONIC, 0, slack, handler, state); r < 0) {
    delete state;
    return errno_error(r, "sd_event_add_time_relative");
  }
  sd_event_source_set_destroy_callback(source, destroy_state<std::function<void()>>);
  sd_event_source_set_enabled(source, SD_EVENT_OFF);
  return EventSource(source);
}

void EventLoop::arm_oneshot(sd_event_source* timer, std::chrono::microseconds delay) {
  sd_event_source_set_time_relative(timer, static_cast<std::uint64_t>(delay.count()));
  sd_event_source_set_enabled(timer, SD_EVENT_ONESHOT);
}

Result<EventSource> EventLoop::add_signal(int signal_number, std::function<void()> callback) {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, signal_number);
  if (sigprocmask(SIG_BLOCK, &mask, nullptr) != 0) return errno_error(-errno, "sigprocmask");
  auto* state = new std::function<void()>(std::move(callback));
  auto handler = [](sd_event_source*, const signalfd_siginfo*, void* userdata) -> int {
    (*static_cast<std::function<void()>*>(userdata))();
    return 0;
  };
  sd_event_source* source = nullptr;
  if (int r = sd_event_add_signal(event_, &source, signal_number, handler, state); r < 0) {
    delete state;
    return errno_error(r, "sd_event_add_signal");
  }
  sd_event_source_set_destroy_callback(source, destroy_state<std::function<void()>>);
  return EventSource(source);
}

Result<EventSource> EventLoop::add_io(int fd, std::uint32_t epoll_events,
                                      std::function<void(std::uint32_t)> callback) {
  auto* state = new std::function<void(std::uint32_t)>(std::move(callback));
  auto handler = [](sd_event_source*, int, std::uint32_t revents, void* userdata) -> int {
    (*static_cast<std::function<void(std::uint32_t)>*>(userdata))(revents);
    return 0;
  };
  sd_event_source* source = nullptr;
  if (int r = sd_event_add_io(event_, &source, fd, epoll_events, handler, state); r < 0) {
    delete state;
    return errno_error(r, "sd_event_add_io");
  }
  sd_event_source_set_destroy_callback(source, destroy_state<std::function<void(std::uint32_t)>>);
  return EventSource(source);
}

int EventLoop::run() {
  int r = sd_event_loop(event_);
  return r < 0 ? 1 : r;
}

void EventLoop::exit(int code) { sd_event_exit(event_, code); }

}  // namespace tally::agent
