// A small JSON reader for the subset the throughput model reads (bench results, hardware and
// config files): objects, arrays, strings (with the usual escapes; \u only for ASCII), numbers,
// true/false/null. Errors throw InvalidArgument naming the line and column.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tilemoe::perf::json {

struct Value {
  enum class Kind { null, boolean, number, string, array, object };
  Kind kind = Kind::null;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<Value> items;                      // array
  std::vector<std::pair<std::string, Value>> members;  // object, in file order

  bool is(Kind k) const { return kind == k; }
  const Value* find(std::string_view key) const;  // object member or nullptr
  // Typed access to an object member; throws InvalidArgument naming `what` and the key.
  const Value& at(std::string_view key, std::string_view what) const;
  double as_number(std::string_view what) const;
  const std::string& as_string(std::string_view what) const;
  // The scalar as text (numbers as written by %.17g, bools true/false); throws for containers.
  std::string scalar_text(std::string_view what) const;
};

Value parse(std::string_view text);
const char* kind_name(Value::Kind k);

}  // namespace tilemoe::perf::json
