// Model descriptions: presets (tilemoe::preset plus the MLA figures of the models that use it)
// and files read into a ModelSpec. Also the flat key/value reader shared with hardware files.
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "perf/json.hpp"
#include "perf/kv_file.hpp"
#include "tilemoe/error.hpp"
#include "tilemoe/perf_model.hpp"

namespace tilemoe::perf {

bool is_file(std::string_view s) {
  std::error_code ec;
  return std::filesystem::is_regular_file(std::filesystem::path(std::string(s)), ec);
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InvalidArgument(detail::concat("file '", path, "': cannot be opened"));
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

static std::string trim(std::string_view s) {
  size_t a = 0, b = s.size();
  while (a < b && (s[a] == ' ' || s[a] == '\t' || s[a] == '\r')) ++a;
  while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t' || s[b - 1] == '\r')) --b;
  return std::string(s.substr(a, b - a));
}

KeyValues parse_key_values(std::string_view text, std::string_view what) {
  KeyValues kv;
  const std::string t = trim(text);
  if (!t.empty() && t[0] == '{') {
    const json::Value v = json::parse(t);
    for (const auto& [k, m] : v.members) kv[k] = m.scalar_text(detail::concat(what, " key ", k));
    return kv;
  }
  std::istringstream in{std::string(text)};
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    const std::string l = trim(line);
    if (l.empty()) continue;
    const auto eq = l.find('=');
    if (eq == std::string::npos)
      throw InvalidArgument(detail::concat(what, " line ", n, " '", l, "': expected key = value"));
    std::string value = trim(std::string_view(l).substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"')
      value = value.substr(1, value.size() - 2);
    kv[trim(std::string_view(l).substr(0, eq))] = value;
  }
  return kv;
}

KeyValues read_key_values(const std::string& path) {
  return parse_key_values(read_text_file(path), detail::concat("file '", path, "'"));
}

double kv_double(const KeyValues& kv, const std::string& key, std::string_view what) {
  const std::string& v = kv.at(key);
  char* end = nullptr;
  errno = 0;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || errno != 0)
    throw InvalidArgument(detail::concat(what, ": ", key, " = '", v, "': expected a number"));
  return x;
}

std::int64_t kv_int(const KeyValues& kv, const std::string& key, std::string_view what) {
  const std::string& v = kv.at(key);
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0)
    throw InvalidArgument(detail::concat(what, ": ", key, " = '", v, "': expected an integer"));
  return x;
}

// MLA figures from the models' config.json (q_lora_rank, kv_lora_rank, qk_rope_head_dim); the
// MoeConfig presets carry head_dim = qk_nope_head_dim = v_head_dim = 128.
static MlaSpec preset_mla(std::string_view name) {
  MlaSpec m;
  if (name == "deepseek-v3" || name == "kimi-k2") {
    m.q_lora_rank = 1536;
    m.kv_lora_rank = 512;
    m.rope_dim = 64;
  }
  return m;
}

ModelSpec load_model(std::string_view name_or_file) {
  if (!is_file(name_or_file)) {
    if (name_or_file.find('/') != std::string_view::npos || name_or_file.find('.') != std::string_view::npos)
      throw InvalidArgument(detail::concat("--config = '", name_or_file,
                                           "': no such file, and not a preset name"));
    ModelSpec m;
    m.moe = preset_variant(name_or_file);  // a preset, or one with sizes changed ("sonic-7b:d4096:n512")
    m.mla = preset_mla(name_or_file.substr(0, name_or_file.find(':')));
    return m;
  }
  const std::string path(name_or_file);
  const std::string what = detail::concat("config file '", path, "'");
  const KeyValues kv = read_key_values(path);
  ModelSpec m;
  if (kv.count("base")) {
    m.moe = preset(kv.at("base"));
    m.mla = preset_mla(kv.at("base"));
  }
  m.moe.name = std::filesystem::path(path).stem().string();
  m.moe.source = path;
  static const std::set<std::string> known = {
      "base", "name", "source", "d_model", "d_expert", "num_experts", "top_k", "num_shared",
      "d_shared", "activation", "num_layers", "num_dense_layers", "d_dense_ff", "n_heads",
      "n_kv_heads", "head_dim", "vocab", "q_lora_rank", "kv_lora_rank", "rope_dim", "router",
      "n_groups", "topk_groups"};
  for (const auto& [k, v] : kv) {
    if (!known.count(k)) {
      std::string list;
      for (const auto& s : known) list += (list.empty() ? "" : ", ") + s;
      throw InvalidArgument(detail::concat(what, ": key '", k, "' unknown (expected one of ", list, ")"));
    }
    if (k == "name") m.moe.name = v;
    else if (k == "source") m.moe.source = v;
    else if (k == "activation") m.moe.activation = parse_activation(v);
    else if (k == "router") m.moe.router = parse_router_kind(v);
    else if (k == "d_model") m.moe.d_model = kv_int(kv, k, what);
    else if (k == "d_expert") m.moe.d_expert = kv_int(kv, k, what);
    else if (k == "num_experts") m.moe.num_experts = static_cast<int>(kv_int(kv, k, what));
    else if (k == "top_k") m.moe.top_k = static_cast<int>(kv_int(kv, k, what));
    else if (k == "num_shared") m.moe.num_shared = static_cast<int>(kv_int(kv, k, what));
    else if (k == "d_shared") m.moe.d_shared = kv_int(kv, k, what);
    else if (k == "num_layers") m.moe.num_layers = static_cast<int>(kv_int(kv, k, what));
    else if (k == "num_dense_layers") m.moe.num_dense_layers = static_cast<int>(kv_int(kv, k, what));
    else if (k == "d_dense_ff") m.moe.d_dense_ff = kv_int(kv, k, what);
    else if (k == "n_heads") m.moe.n_heads = static_cast<int>(kv_int(kv, k, what));
    else if (k == "n_kv_heads") m.moe.n_kv_heads = static_cast<int>(kv_int(kv, k, what));
    else if (k == "head_dim") m.moe.head_dim = static_cast<int>(kv_int(kv, k, what));
    else if (k == "vocab") m.moe.vocab = kv_int(kv, k, what);
    else if (k == "q_lora_rank") m.mla.q_lora_rank = kv_int(kv, k, what);
    else if (k == "kv_lora_rank") m.mla.kv_lora_rank = kv_int(kv, k, what);
    else if (k == "rope_dim") m.mla.rope_dim = kv_int(kv, k, what);
    else if (k == "n_groups") m.moe.n_groups = static_cast<int>(kv_int(kv, k, what));
    else if (k == "topk_groups") m.moe.topk_groups = static_cast<int>(kv_int(kv, k, what));
  }
  m.moe.validate();
  check_arg(m.moe.n_heads >= 0 && m.moe.head_dim >= 0 && m.moe.n_kv_heads >= 0, "n_heads/head_dim",
            m.moe.n_heads, ">= 0");
  check_arg(m.moe.num_dense_layers == 0 || m.moe.d_dense_ff > 0, "d_dense_ff", m.moe.d_dense_ff,
            "> 0 when num_dense_layers > 0");
  return m;
}

}  // namespace tilemoe::perf
