// Flat key/value files for hardware and model descriptions: either a JSON object of scalars or
// "key = value" lines ('#' starts a comment). Internal to src/perf.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

namespace tilemoe::perf {

using KeyValues = std::map<std::string, std::string>;

// True when `s` names an existing regular file.
bool is_file(std::string_view s);
std::string read_text_file(const std::string& path);
KeyValues parse_key_values(std::string_view text, std::string_view what);
KeyValues read_key_values(const std::string& path);

// Typed reads of one key; throw InvalidArgument naming the file's key, the value and the type.
double kv_double(const KeyValues& kv, const std::string& key, std::string_view what);
std::int64_t kv_int(const KeyValues& kv, const std::string& key, std::string_view what);

}  // namespace tilemoe::perf
