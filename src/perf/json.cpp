// The JSON reader: recursive descent over a string_view, one function per grammar rule.
#include "perf/json.hpp"

#include <cstdio>
#include <cstdlib>

#include "tilemoe/error.hpp"

namespace tilemoe::perf::json {

namespace {

class Parser {
 public:
  explicit Parser(std::string_view s) : s_(s) {}

  Value document() {
    Value v = value(0);
    skip_space();
    if (i_ != s_.size()) fail("unexpected text after the value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    int line = 1, col = 1;
    for (size_t k = 0; k < i_ && k < s_.size(); ++k) {
      if (s_[k] == '\n') { ++line; col = 1; } else { ++col; }
    }
    throw InvalidArgument(detail::concat("json at line ", line, ", column ", col, ": ", what));
  }

  void skip_space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }

  bool eat(char c) {
    skip_space();
    if (i_ < s_.size() && s_[i_] == c) { ++i_; return true; }
    return false;
  }

  void expect(char c) {
    if (!eat(c)) fail(detail::concat("expected '", c, "'"));
  }

  Value value(int depth) {
    if (depth > 64) fail("nesting deeper than 64");
    skip_space();
    if (i_ >= s_.size()) fail("unexpected end of input");
    const char c = s_[i_];
    Value v;
    if (c == '{') return object(depth);
    if (c == '[') return array(depth);
    if (c == '"') { v.kind = Value::Kind::string; v.str = string(); return v; }
    if (literal("true")) { v.kind = Value::Kind::boolean; v.b = true; return v; }
    if (literal("false")) { v.kind = Value::Kind::boolean; return v; }
    if (literal("null")) return v;
    if (c == '-' || (c >= '0' && c <= '9')) { v.kind = Value::Kind::number; v.num = number(); return v; }
    fail(detail::concat("unexpected character '", c, "'"));
  }

  bool literal(std::string_view word) {
    if (s_.substr(i_, word.size()) != word) return false;
    i_ += word.size();
    return true;
  }

  Value object(int depth) {
    Value v;
    v.kind = Value::Kind::object;
    expect('{');
    if (eat('}')) return v;
    do {
      skip_space();
      if (i_ >= s_.size() || s_[i_] != '"') fail("expected a member name in quotes");
      std::string key = string();
      expect(':');
      v.members.emplace_back(std::move(key), value(depth + 1));
    } while (eat(','));
    expect('}');
    return v;
  }

  Value array(int depth) {
    Value v;
    v.kind = Value::Kind::array;
    expect('[');
    if (eat(']')) return v;
    do {
      v.items.push_back(value(depth + 1));
    } while (eat(','));
    expect(']');
    return v;
  }

  std::string string() {
    ++i_;  // the opening quote
    std::string out;
    while (true) {
      if (i_ >= s_.size()) fail("unterminated string");
      const char c = s_[i_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') { out += c; continue; }
      if (i_ >= s_.size()) fail("unterminated escape");
      const char e = s_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (i_ + 4 > s_.size()) fail("short \\u escape");
          const std::string hex(s_.substr(i_, 4));
          char* end = nullptr;
          const long code = std::strtol(hex.c_str(), &end, 16);
          if (*end != '\0') fail("bad \\u escape");
          if (code > 0x7f) fail("\\u escapes beyond ASCII are not supported");
          out += static_cast<char>(code);
          i_ += 4;
          break;
        }
        default: fail(detail::concat("unknown escape '\\", e, "'"));
      }
    }
  }

  double number() {
    const size_t start = i_;
    if (s_[i_] == '-') ++i_;
    auto digits = [&] {
      const size_t d0 = i_;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
      if (i_ == d0) fail("expected a digit");
    };
    digits();
    if (i_ < s_.size() && s_[i_] == '.') { ++i_; digits(); }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      digits();
    }
    const std::string text(s_.substr(start, i_ - start));
    return std::strtod(text.c_str(), nullptr);
  }

  std::string_view s_;
  size_t i_ = 0;
};

}  // namespace

const char* kind_name(Value::Kind k) {
  switch (k) {
    case Value::Kind::null: return "null";
    case Value::Kind::boolean: return "a boolean";
    case Value::Kind::number: return "a number";
    case Value::Kind::string: return "a string";
    case Value::Kind::array: return "an array";
    case Value::Kind::object: return "an object";
  }
  return "?";
}

Value parse(std::string_view text) { return Parser(text).document(); }

const Value* Value::find(std::string_view key) const {
  for (const auto& [k, v] : members)
    if (k == key) return &v;
  return nullptr;
}

const Value& Value::at(std::string_view key, std::string_view what) const {
  if (kind != Kind::object)
    throw InvalidArgument(detail::concat(what, ": expected an object, got ", kind_name(kind)));
  const Value* v = find(key);
  if (!v) throw InvalidArgument(detail::concat(what, ": missing member \"", key, "\""));
  return *v;
}

double Value::as_number(std::string_view what) const {
  if (kind != Kind::number)
    throw InvalidArgument(detail::concat(what, ": expected a number, got ", kind_name(kind)));
  return num;
}

const std::string& Value::as_string(std::string_view what) const {
  if (kind != Kind::string)
    throw InvalidArgument(detail::concat(what, ": expected a string, got ", kind_name(kind)));
  return str;
}

std::string Value::scalar_text(std::string_view what) const {
  switch (kind) {
    case Kind::string: return str;
    case Kind::boolean: return b ? "true" : "false";
    case Kind::number: {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.17g", num);
      return buf;
    }
    default:
      throw InvalidArgument(detail::concat(what, ": expected a string, number or boolean, got ",
                                           kind_name(kind)));
  }
}

}  // namespace tilemoe::perf::json
