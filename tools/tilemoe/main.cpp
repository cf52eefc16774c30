// tilemoe: the command-line tool. Subcommands live one per file (cmd_*.cpp).
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "commands.hpp"

namespace {
void usage(std::FILE* f) {
  std::fprintf(f,
               "usage: tilemoe <command> [options]\n\n"
               "commands:\n"
               "  demo      run the chapter's verification checklist on the default device\n"
               "  run       time one MoE layer forward: tilemoe run --config NAME --tokens T\n"
               "  configs   list the model presets\n\n"
               "tilemoe <command> --help shows each command's options.\n");
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "demo") return tilemoe::tool::cmd_demo(argc - 1, argv + 1);
    if (cmd == "run") return tilemoe::tool::cmd_run(argc - 1, argv + 1);
    if (cmd == "configs") return tilemoe::tool::cmd_configs(argc - 1, argv + 1);
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
      usage(stdout);
      return 0;
    }
    std::fprintf(stderr, "tilemoe: unknown command '%s' (expected demo, run or configs)\n", cmd.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tilemoe %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}
