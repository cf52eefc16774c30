// Errors: one typed exception, thrown by every check in the library. Its message names the
// argument, the value it had and what is allowed. The library never exits; tools catch.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

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

}  // namespace tilemoe
