// Errors: one typed exception, thrown by every check in the library. Its message names the
// argument, the value it had and what is allowed. The library never exits; tools catch.
#pragma once
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace tilemoe {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bad input from the caller: names the argument, its value and what is allowed.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// A failure of a GPU API (CUDA, cuBLAS, NCCL) with file and line.
class DeviceError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}
}  // namespace detail

// check_arg(ok, "top_k", k, "1 <= top_k <= num_experts (8)") throws
// InvalidArgument("top_k = 9: expected 1 <= top_k <= num_experts (8)").
template <class Value>
void check_arg(bool ok, const char* name, const Value& value, const std::string& allowed) {
  if (!ok) throw InvalidArgument(detail::concat(name, " = ", value, ": expected ", allowed));
}

// An integer value given as text (a command-line flag's): parse_int("--tokens", "12x", 1, 100)
// throws InvalidArgument("--tokens = '12x': expected an integer in [1, 100]"), as does a value
// outside [lo, hi].
inline long long parse_int(std::string_view name, std::string_view text, long long lo, long long hi) {
  long long v = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc() || ptr != end || v < lo || v > hi)
    throw InvalidArgument(detail::concat(name, " = '", text, "': expected an integer in [", lo, ", ", hi, "]"));
  return v;
}

// The same for a real number: parse_double("--skew", "x", 0, 10) throws
// InvalidArgument("--skew = 'x': expected a number in [0, 10]"), as does a value outside
// [lo, hi] (NaN and the infinities included, where the bounds are finite).
inline double parse_double(std::string_view name, std::string_view text, double lo, double hi) {
  const std::string s(text);
  char* end = nullptr;
  errno = 0;
  const double v = s.empty() ? 0.0 : std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || errno != 0 || !(v >= lo && v <= hi))
    throw InvalidArgument(detail::concat(name, " = '", text, "': expected a number in [", lo, ", ", hi, "]"));
  return v;
}

}  // namespace tilemoe
