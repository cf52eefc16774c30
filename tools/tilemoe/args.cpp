#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "commands.hpp"
#include "tilemoe/error.hpp"

namespace tilemoe::tool {

Args::Args(std::string command, std::string summary, std::vector<Option> options)
    : command_(std::move(command)), summary_(std::move(summary)), options_(std::move(options)) {}

const Args::Option& Args::find(const std::string& name) const {
  for (const auto& o : options_)
    if (o.name == name) return o;
  std::string list;
  for (const auto& o : options_) list += (list.empty() ? "--" : ", --") + o.name;
  throw InvalidArgument(detail::concat("option --", name, ": unknown to 'tilemoe ", command_,
                                       "' (expected one of ", list, ", --help)"));
}

bool Args::parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      print_help();
      return false;
    }
    if (a.rfind("--", 0) != 0)
      throw InvalidArgument(detail::concat("argument '", a, "': expected an option starting with --"));
    a = a.substr(2);
    std::string value;
    if (auto eq = a.find('='); eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
      values_[find(a).name] = value;
      continue;
    }
    const Option& o = find(a);
    if (o.flag) {
      values_[o.name] = "1";
    } else {
      if (i + 1 >= argc) throw InvalidArgument(detail::concat("option --", a, ": expected a value"));
      values_[o.name] = argv[++i];
    }
  }
  return true;
}

bool Args::has(const std::string& name) const {
  find(name);
  return values_.count(name) > 0;
}

std::string Args::get(const std::string& name) const {
  const Option& o = find(name);
  auto it = values_.find(name);
  return it != values_.end() ? it->second : o.default_value;
}

long long Args::get_int(const std::string& name) const {
  const std::string v = get(name);
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0)
    throw InvalidArgument(detail::concat("--", name, " = '", v, "': expected an integer",
                                         errno == ERANGE ? " (out of range)" : ""));
  return x;
}

double Args::get_double(const std::string& name) const {
  const std::string v = get(name);
  char* end = nullptr;
  errno = 0;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || errno != 0)
    throw InvalidArgument(detail::concat("--", name, " = '", v, "': expected a number",
                                         errno == ERANGE ? " (out of range)" : ""));
  return x;
}

std::vector<std::string> Args::get_list(const std::string& name) const {
  std::vector<std::string> out;
  std::string v = get(name), cur;
  for (char c : v) {
    if (c == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

std::vector<long long> Args::get_int_list(const std::string& name) const {
  std::vector<long long> out;
  for (const auto& s : get_list(name)) {
    char* end = nullptr;
    errno = 0;
    const long long x = std::strtoll(s.c_str(), &end, 10);
    if (*end != '\0' || errno != 0)
      throw InvalidArgument(detail::concat("--", name, " item '", s, "': expected an integer",
                                           errno == ERANGE ? " (out of range)" : ""));
    out.push_back(x);
  }
  return out;
}

void Args::print_help() const {
  std::printf("usage: tilemoe %s [options]\n\n%s\n\noptions:\n", command_.c_str(), summary_.c_str());
  for (const auto& o : options_) {
    std::string left = "--" + o.name + (o.flag ? "" : " VALUE");
    std::printf("  %-24s %s", left.c_str(), o.help.c_str());
    if (!o.default_value.empty()) std::printf(" (default: %s)", o.default_value.c_str());
    std::printf("\n");
  }
  std::printf("  %-24s %s\n", "--help", "show this help");
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (c == '\n') { o += "\\n"; continue; }
    o += c;
  }
  return o;
}

}  // namespace tilemoe::tool
