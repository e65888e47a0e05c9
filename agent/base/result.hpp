#pragma once
// Errors as values at module boundaries: a small Result<T> spelled like C++23's std::expected
// (has_value(), value(), error()), carrying a code and a message that names the file, key or device at fault.
// "Nothing there" is std::optional, not an error. Exceptions are only for "cannot start", caught in main.

#include <cassert>
#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace tally {

enum class ErrorCode {
  invalid_argument,  // input (config, message, segment) is malformed or out of range
  not_found,         // a file, device or symbol that is required is absent
  io,                // a system call failed
  unsupported,       // the kernel, driver or library cannot do this
  permission,        // the caller lacks a privilege
};

struct Error {
  ErrorCode code = ErrorCode::invalid_argument;
  std::string message;
};

template <typename... Args>
Error make_error(ErrorCode code, fmt::format_string<Args...> format, Args&&... args) {
  return Error{code, fmt::format(format, std::forward<Args>(args)...)};
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : storage_(std::move(value)) {}           // NOLINT(google-explicit-constructor)
  Result(Error error) : storage_(std::move(error)) {}       // NOLINT(google-explicit-constructor)

  bool has_value() const { return storage_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & { assert(has_value()); return std::get<0>(storage_); }
  const T& value() const& { assert(has_value()); return std::get<0>(storage_); }
  T&& value() && { assert(has_value()); return std::get<0>(std::move(storage_)); }
  const Error& error() const { assert(!has_value()); return std::get<1>(storage_); }

  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Error> storage_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT(google-explicit-constructor)

  bool has_value() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { assert(!ok_); return error_; }

 private:
  Error error_;
  bool ok_ = true;
};

}  // namespace tally

// Returns early from a function returning Result<...> when `expression` (a Result) holds an error.
#define TALLY_TRY(expression)                                        \
  do {                                                               \
    if (auto tally_try_result = (expression); !tally_try_result) {   \
      return tally_try_result.error();                               \
    }                                                                \
  } while (false)
