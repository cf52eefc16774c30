// The subcommands of the tilemoe tool and the small argument parser they share.
#pragma once
#include <map>
#include <string>
#include <vector>

namespace tilemoe::tool {

int cmd_demo(int argc, char** argv);
int cmd_run(int argc, char** argv);
int cmd_configs(int argc, char** argv);

// --name value / --flag parsing against a declared option list. Unknown options, missing values
// and malformed numbers throw InvalidArgument naming the option.
class Args {
 public:
  struct Option {
    std::string name;  // without the dashes
    std::string help;
    std::string default_value;  // "" for none
    bool flag = false;
  };
  Args(std::string command, std::string summary, std::vector<Option> options);
  // Returns false when --help was given (the help has been printed).
  bool parse(int argc, char** argv);
  bool has(const std::string& name) const;
  std::string get(const std::string& name) const;
  long long get_int(const std::string& name) const;
  double get_double(const std::string& name) const;
  std::vector<long long> get_int_list(const std::string& name) const;  // "1,2,3"
  std::vector<std::string> get_list(const std::string& name) const;
  void print_help() const;

 private:
  const Option& find(const std::string& name) const;
  std::string command_, summary_;
  std::vector<Option> options_;
  std::map<std::string, std::string> values_;
};

// Escapes a string for a JSON value.
std::string json_escape(const std::string& s);

}  // namespace tilemoe::tool

#include <functional>

#include "tilemoe/tilemoe.hpp"

namespace tilemoe::tool {

struct Timing {
  double median_ms = 0;
  double min_ms = 0;
  int repeats = 0;
};
// Runs fn once to warm up, then `repeats` times, synchronizing `device` around each run; the
// median and the best wall-clock time. Shows "label i/N" on stderr when it takes over a second.
Timing time_runs(const std::function<void()>& fn, int repeats, Device device, const std::string& label);

// Bytes the layer's weights and a forward over T tokens need; throws InvalidArgument with the
// figures when that passes 80% of this machine's memory (CPU).
double layer_bytes(const MoeConfig& cfg, DType dtype, std::int64_t T);
void check_fits(const MoeConfig& cfg, DType dtype, std::int64_t T, Device device);

}  // namespace tilemoe::tool
