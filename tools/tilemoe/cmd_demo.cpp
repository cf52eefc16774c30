#include "commands.hpp"
namespace tilemoe::tool {
int cmd_demo(int, char**) { return 0; }
}
