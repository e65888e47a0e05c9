#pragma once
// The agent's single event loop: a thin owner of an sd-event loop (libsystemd). sd-event gives timers, signals,
// the systemd watchdog and fd/inotify sources in one poll, so an idle agent sleeps in epoll_wait and uses no CPU.
// Callbacks run on the loop's thread; nothing here starts a thread.

#include <chrono>
#include <functional>
#include <memory>

#include <systemd/sd-event.h>

#include "agent/base/result.hpp"

namespace tally::agent {

struct EventSourceUnref {
  void operator()(sd_event_source* source) const { sd_event_source_disable_unref(source); }
};
using EventSource = std::unique_ptr<sd_event_source, EventSourceUnref>;

class EventLoop {
 public:
  // Creates the loop and turns on systemd's watchdog keep-alive when WATCHDOG_USEC is set for this process.
  static Result<std::unique_ptr<EventLoop>> create();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Calls `callback` every `period` (CLOCK_MONOTONIC, no drift) until the returned source is destroyed. sd-event may
  // fire a timer up to `accuracy` late so that it can coalesce wake-ups; 0 would mean its default of 250 ms, which
  // no timer of ours can afford, so every timer says what it needs.
  Result<EventSource> add_periodic(std::chrono::microseconds period, std::chrono::microseconds accuracy,
                                   std::function<void()> callback);

  // Pauses a periodic timer (no wake-ups at all) or resumes it, its next call one period from now.
  static void set_periodic_running(sd_event_source* timer, bool running);

  // A one-shot timer, off until armed: arm_oneshot() makes it call `callback` once, `delay` from now (at most
  // `accuracy` late); arming it again before it fires pushes it back (so a burst of events gives one call).
  Result<EventSource> add_oneshot(std::chrono::microseconds accuracy, std::function<void()> callback);
  static void arm_oneshot(sd_event_source* timer, std::chrono::microseconds delay);

  // Calls `callback` when signal `signal_number` arrives. The signal is blocked for the process so that it is
  // delivered through the loop only.
  Result<EventSource> add_signal(int signal_number, std::function<void()> callback);

  // Calls `callback` when `fd` has any of `epoll_events` pending.
  Result<EventSource> add_io(int fd, std::uint32_t epoll_events, std::function<void(std::uint32_t)> callback);

  // Runs until exit() is called; returns its code.
  int run();
  void exit(int code);

  sd_event* native() const { return event_; }
  bool watchdog_enabled() const { return watchdog_; }

 private:
  explicit EventLoop(sd_event* event) : event_(event) {}
  sd_event* event_;
  bool watchdog_ = false;
};

}  // namespace tally::agent
