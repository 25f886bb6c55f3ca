// Errors: every failure the user can cause (bad config, bad data file, impossible shape, diverging run)
// is a trainer::Error carrying a message that names the file, key or value and what was expected.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace trainer {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace trainer

// TRAINER_CHECK(cond, "format {}", args...): throws trainer::Error with the formatted message.
#define TRAINER_CHECK(cond, ...)       \
  do {                                 \
    if (!(cond)) ::trainer::fail(__VA_ARGS__); \
  } while (0)
