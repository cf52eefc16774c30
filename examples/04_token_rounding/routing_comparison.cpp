// Step 3 of the chapter, exercise 02's companion: top-k routing against every token-rounding rule,
// across sparsity (E from 8 to 512 at a fixed K) and token counts, on router logits with uniform
// and with skewed (Zipf-like) expert popularity. Prints a table, writes routing_comparison.csv and
// routing_comparison.svg (tile utilization and layer-output deviation against E) to --out.
// Usage: routing_comparison --help
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <numeric>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "tilemoe/tilemoe.hpp"

using namespace tilemoe;

namespace {

struct Args {
  std::string out = ".";
  std::vector<std::int64_t> tokens = {1024, 4096};
  std::vector<int> experts = {8, 16, 32, 64, 128, 256, 512};
  int top_k = 8;
  int tile = 128;
  std::int64_t d = 32;
  double skew = 1.0;
  std::uint64_t seed = 1;
};

void usage() {
  std::printf(
      "routing_comparison: top-k routing against every token-rounding rule\n"
      "  --out DIR        where routing_comparison.csv and .svg go (default .)\n"
      "  --tokens LIST    token counts, comma separated (default 1024,4096; the chart shows the last)\n"
      "  --experts LIST   expert counts E (default 8,16,32,64,128,256,512)\n"
      "  --k K            experts per token, fixed across E (default 8)\n"
      "  --tile M         tile size, a power of two (default 128)\n"
      "  --d D            d_model = d_expert of the layer used for the output deviation (default 32)\n"
      "  --skew S         Zipf exponent of the skewed popularity: logit += -S * ln(rank + 1) (default 1)\n"
      "  --seed S         seed of everything (default 1)\n");
}

template <class Int>
std::vector<Int> parse_list(std::string_view flag, const char* v, long long lo, long long hi) {
  std::vector<Int> out;
  std::stringstream ss(v);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(static_cast<Int>(parse_int(flag, item, lo, hi)));
  if (out.empty()) throw InvalidArgument(detail::concat(flag, " = '", v, "': expected comma-separated integers"));
  return out;
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string_view f = argv[i];
    if (f == "--help" || f == "-h") { usage(); std::exit(0); }
    if (i + 1 >= argc) throw InvalidArgument(std::string(f) + ": expected a value after it (see --help)");
    const char* v = argv[++i];
    if (f == "--out") a.out = v;
    else if (f == "--tokens") a.tokens = parse_list<std::int64_t>(f, v, 1, 1ll << 24);
    else if (f == "--experts") a.experts = parse_list<int>(f, v, 1, 1 << 16);
    else if (f == "--k") a.top_k = static_cast<int>(parse_int(f, v, 1, 1 << 16));
    else if (f == "--tile") a.tile = static_cast<int>(parse_int(f, v, 1, 1 << 20));
    else if (f == "--d") a.d = parse_int(f, v, 2, 1 << 20);
    else if (f == "--skew") a.skew = parse_double(f, v, 0.0, 100.0);
    else if (f == "--seed") a.seed = static_cast<std::uint64_t>(parse_int(f, v, 0, LLONG_MAX));
    else throw InvalidArgument("unknown flag " + std::string(f) + " (see --help)");
  }
  return a;
}

struct Row {
  std::string dist;
  int E = 0;
  std::int64_t T = 0;
  std::string rule;
  RoundingMetrics m;
  double deviation = 0;
};

// A layer whose router logits are noise ~ N(0, 1) plus a per-expert popularity offset: x[:, 0]
// is set to 1 and the router's column 0 holds -skew * ln(rank + 1), ranks shuffled by the seed.
void make_skewed(const MoeConfig& cfg, MoeWeights& w, Tensor& x, double skew, std::uint64_t seed) {
  const int E = cfg.num_experts;
  const std::int64_t d = cfg.d_model, T = x.dim(0);
  std::vector<int> rank(E);
  std::iota(rank.begin(), rank.end(), 0);
  std::uint64_t s = seed * 0x9e3779b97f4a7c15ull + 17;  // a small LCG for the shuffle
  for (int i = E - 1; i > 0; --i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    std::swap(rank[i], rank[static_cast<int>((s >> 33) % static_cast<std::uint64_t>(i + 1))]);
  }
  float* r = w.router.data<float>();
  // random_weights draws the router ~ N(0, 1/d); rescale so the noise part has unit variance.
  const float rescale = static_cast<float>(std::sqrt(static_cast<double>(d) / (d - 1)));
  for (int e = 0; e < E; ++e) {
    for (std::int64_t j = 1; j < d; ++j) r[e * d + j] *= rescale;
    r[e * d] = static_cast<float>(-skew * std::log(1.0 + rank[e]));
  }
  float* xp = x.data<float>();
  for (std::int64_t t = 0; t < T; ++t) xp[t * d] = 1.0f;
}

// ---- the chart: hand-written SVG ----

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

struct Series {
  std::string name, color;
  std::vector<std::pair<double, double>> pts;  // (log2 E, value)
};

// One panel at (x0, y0) of size w x h; values from ymin to ymax.
void panel(std::ostringstream& o, double x0, double y0, double w, double h, const std::string& title,
           const std::string& ylabel, double ymin, double ymax, const std::vector<int>& Es,
           const std::vector<Series>& series, bool percent) {
  const double lx0 = std::log2(Es.front()), lx1 = std::log2(Es.back());
  auto X = [&](double lx) { return x0 + (lx1 == lx0 ? w / 2 : (lx - lx0) / (lx1 - lx0) * w); };
  auto Y = [&](double v) { return y0 + h - (v - ymin) / (ymax - ymin) * h; };
  o << "<text x='" << x0 + w / 2 << "' y='" << y0 - 12 << "' text-anchor='middle' font-size='15' font-weight='bold'>"
    << title << "</text>\n";
  o << "<rect x='" << x0 << "' y='" << y0 << "' width='" << w << "' height='" << h
    << "' fill='none' stroke='#444'/>\n";
  for (int i = 0; i <= 5; ++i) {
    const double v = ymin + (ymax - ymin) * i / 5.0, y = Y(v);
    o << "<line x1='" << x0 << "' x2='" << x0 + w << "' y1='" << y << "' y2='" << y
      << "' stroke='#ddd'/>\n";
    o << "<text x='" << x0 - 6 << "' y='" << y + 4 << "' text-anchor='end' font-size='12'>"
      << (percent ? fmt("%.0f%%", 100 * v) : fmt("%.2f", v)) << "</text>\n";
  }
  for (int E : Es) {
    const double x = X(std::log2(E));
    o << "<line x1='" << x << "' x2='" << x << "' y1='" << y0 << "' y2='" << y0 + h << "' stroke='#eee'/>\n";
    o << "<text x='" << x << "' y='" << y0 + h + 16 << "' text-anchor='middle' font-size='12'>" << E << "</text>\n";
  }
  o << "<text x='" << x0 + w / 2 << "' y='" << y0 + h + 34 << "' text-anchor='middle' font-size='12'>experts E (K fixed)</text>\n";
  o << "<text x='" << x0 - 48 << "' y='" << y0 + h / 2 << "' text-anchor='middle' font-size='12' transform='rotate(-90 "
    << x0 - 48 << ' ' << y0 + h / 2 << ")'>" << ylabel << "</text>\n";
  for (const auto& s : series) {
    o << "<polyline fill='none' stroke='" << s.color << "' stroke-width='2' points='";
    for (auto [lx, v] : s.pts) o << X(lx) << ',' << Y(std::clamp(v, ymin, ymax)) << ' ';
    o << "'/>\n";
    for (auto [lx, v] : s.pts)
      o << "<circle cx='" << X(lx) << "' cy='" << Y(std::clamp(v, ymin, ymax)) << "' r='3' fill='" << s.color << "'/>\n";
  }
}

void write_svg(const std::string& path, const Args& a, const std::vector<Row>& rows) {
  const std::vector<std::string> rules = {"top-k", "nearest", "up", "down", "stochastic", "balanced"};
  const std::vector<std::string> colors = {"#000000", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e"};
  const std::vector<std::string> dists = {"uniform", "zipf"};
  const std::int64_t T = a.tokens.back();
  const double pw = 360, ph = 240, left = 90, top = 110, gapx = 100, gapy = 120;
  std::ostringstream o;
  const double W = left + 3 * pw + 2 * gapx + 30, H = top + 2 * ph + gapy + 80;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
    << "' font-family='sans-serif'>\n<rect width='100%' height='100%' fill='white'/>\n";
  o << "<text x='" << W / 2 << "' y='28' text-anchor='middle' font-size='18' font-weight='bold'>Token rounding vs top-k routing: T = "
    << T << " tokens, K = " << a.top_k << ", tile M = " << a.tile << "</text>\n";
  o << "<text x='" << W / 2 << "' y='50' text-anchor='middle' font-size='13' fill='#444'>mean tokens per expert T*K/E "
       "falls as E grows; it is at least 2 tiles for E &lt;= "
    << T * a.top_k / (2 * a.tile) << "</text>\n";
  double max_dev = 0.05;
  for (const auto& r : rows)
    if (r.T == T && r.rule != "top-k") max_dev = std::max(max_dev, r.deviation);
  max_dev = std::ceil(max_dev * 5) / 5;  // ticks at multiples of 0.04
  for (std::size_t di = 0; di < dists.size(); ++di) {
    std::vector<Series> util, comp, dev;
    for (std::size_t ri = 0; ri < rules.size(); ++ri) {
      Series su{rules[ri], colors[ri], {}}, sc = su, sd = su;
      for (const auto& r : rows)
        if (r.T == T && r.dist == dists[di] && r.rule == rules[ri]) {
          const auto& m = r.m;
          const double lx = std::log2(r.E);
          const double before = static_cast<double>(m.assignments_before + m.padded_rows_before);
          const double after = static_cast<double>(m.assignments_after + m.padded_rows_after);
          su.pts.emplace_back(lx, ri == 0 ? m.utilization_before : m.utilization_after);
          sc.pts.emplace_back(lx, ri == 0 ? 1.0 : after / before);
          sd.pts.emplace_back(lx, r.deviation);
        }
      util.push_back(su);
      comp.push_back(sc);
      if (ri > 0) dev.push_back(sd);
    }
    const double y0 = top + di * (ph + gapy);
    const std::string d = dists[di] == "zipf" ? "Zipf-skewed popularity (s = " + fmt("%.1f", a.skew) + ")" : "uniform popularity";
    o << "<text x='" << 12 << "' y='" << y0 - 34 << "' font-size='15' font-weight='bold' fill='#333'>Router logits: " << d
      << "</text>\n";
    panel(o, left, y0, pw, ph, "Tile utilization", "useful rows / computed rows", 0.0, 1.0, a.experts, util, true);
    o << "<text x='" << left + pw - 8 << "' y='" << y0 + 18 << "' text-anchor='end' font-size='12' fill='#444'>"
         "every rounding rule: 100%</text>\n";
    panel(o, left + pw + gapx, y0, pw, ph, "GEMM rows computed", "rows computed / top-k's", 0.0, 1.0, a.experts, comp, true);
    o << "<text x='" << left + pw + gapx + 8 << "' y='" << y0 + ph - 10 << "' font-size='12' fill='#444'>"
         "top-k and up: 100% (up fills the tiles top-k computes)</text>\n";
    panel(o, left + 2 * (pw + gapx), y0, pw, ph, "Layer output deviation", "||out - out_topk|| / ||out_topk||", 0.0,
          max_dev, a.experts, dev, false);
  }
  // Legend.
  double lx = left, ly = H - 24;
  for (std::size_t ri = 0; ri < rules.size(); ++ri) {
    o << "<line x1='" << lx << "' x2='" << lx + 24 << "' y1='" << ly << "' y2='" << ly << "' stroke='" << colors[ri]
      << "' stroke-width='3'/>\n<text x='" << lx + 30 << "' y='" << ly + 4 << "' font-size='13'>" << rules[ri]
      << (ri == 0 ? " (no rounding)" : "") << "</text>\n";
    lx += ri == 0 ? 170 : 120;
  }
  o << "</svg>\n";
  std::ofstream f(path);
  if (!f) throw InvalidArgument("--out: cannot write " + path);
  f << o.str();
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse(argc, argv);
  RoundingOptions base;
  base.tile = a.tile;
  base.seed = a.seed;
  base.validate();
  const std::vector<RoundingRule> rules = {RoundingRule::nearest, RoundingRule::up, RoundingRule::down,
                                           RoundingRule::stochastic, RoundingRule::balanced};
  for (int E : a.experts) {  // refuse a bad sweep before printing anything
    check_arg(E >= 1 && a.top_k >= 1 && a.top_k <= E, "--k", a.top_k,
              "1 <= K <= every E of --experts (" + std::to_string(E) + ")");
  }
  std::vector<Row> rows;
  std::printf("%-7s %4s %6s %7s | %-10s %6s %7s %6s %6s %7s %9s %9s\n", "logits", "E", "T", "T*K/E", "rule",
              "util", "padded", "drop%", "add%", "tok.ch%", "max/min", "out.dev");
  for (const char* dist : {"uniform", "zipf"})
    for (std::int64_t T : a.tokens)
      for (int E : a.experts) {
        MoeConfig cfg;
        cfg.name = "comparison";
        cfg.d_model = a.d;
        cfg.d_expert = a.d;
        cfg.num_experts = E;
        cfg.top_k = a.top_k;
        cfg.validate();
        MoeWeights w = random_weights(cfg, DType::f32, a.seed + static_cast<std::uint64_t>(E));
        Tensor x = random_tokens(T, cfg.d_model, DType::f32, a.seed + static_cast<std::uint64_t>(T));
        make_skewed(cfg, w, x, std::string_view(dist) == "zipf" ? a.skew : 0.0, a.seed + static_cast<std::uint64_t>(E));
        ForwardTrace tr0;
        const Tensor out0 = moe_forward(cfg, w, x, {}, &tr0);
        const std::vector<double> ref = out0.to_doubles();
        auto print = [&](const Row& r) {
          const auto& m = r.m;
          const bool topk = r.rule == "top-k";
          const double A = static_cast<double>(m.assignments_before);
          const auto mx = topk ? *std::max_element(m.counts_before.begin(), m.counts_before.end()) : m.max_load;
          const auto mn = topk ? *std::min_element(m.counts_before.begin(), m.counts_before.end()) : m.min_load;
          std::printf("%-7s %4d %6lld %7.1f | %-10s %5.1f%% %7lld %6.2f %6.2f %7.2f %4lld/%-4lld %9.4f\n", dist, E,
                      static_cast<long long>(T), A / E, r.rule.c_str(),
                      100 * (topk ? m.utilization_before : m.utilization_after),
                      static_cast<long long>(topk ? m.padded_rows_before : m.padded_rows_after), 100 * m.dropped / A,
                      100 * m.added / A, 100 * m.tokens_changed, static_cast<long long>(mx), static_cast<long long>(mn),
                      r.deviation);
        };
        for (std::size_t i = 0; i < rules.size(); ++i) {
          RoundingOptions opt = base;
          opt.rule = rules[i];
          ForwardOptions fo;
          fo.rounding = opt;
          ForwardTrace tr;
          const Tensor out = moe_forward(cfg, w, x, fo, &tr);
          Row r{dist, E, T, to_string(rules[i]), *tr.rounding, relative_error(out.to_floats(), ref)};
          if (i == 0) {  // the top-k row: the same metrics before rounding
            Row t{dist, E, T, "top-k", *tr.rounding, 0.0};
            t.m.dropped = t.m.added = 0;
            t.m.tokens_changed = 0;
            rows.push_back(t);
            print(t);
          }
          rows.push_back(r);
          print(r);
        }
      }

  const std::string csv = a.out + "/routing_comparison.csv", svg = a.out + "/routing_comparison.svg";
  std::ofstream f(csv);
  if (!f) throw InvalidArgument("--out = '" + a.out + "': cannot write " + csv);
  f << "logits,E,K,T,tile,rule,tokens_per_expert,utilization,padded_rows,assignments,dropped,added,"
       "tokens_changed,max_load,min_load,output_deviation\n";
  for (const auto& r : rows) {
    const auto& m = r.m;
    const bool topk = r.rule == "top-k";
    const auto& cnt = topk ? m.counts_before : m.counts_after;
    f << r.dist << ',' << r.E << ',' << a.top_k << ',' << r.T << ',' << a.tile << ',' << r.rule << ','
      << static_cast<double>(m.assignments_before) / r.E << ','
      << (topk ? m.utilization_before : m.utilization_after) << ','
      << (topk ? m.padded_rows_before : m.padded_rows_after) << ','
      << (topk ? m.assignments_before : m.assignments_after) << ',' << m.dropped << ',' << m.added << ','
      << m.tokens_changed << ',' << *std::max_element(cnt.begin(), cnt.end()) << ','
      << *std::min_element(cnt.begin(), cnt.end()) << ',' << r.deviation << '\n';
  }
  write_svg(svg, a, rows);
  std::printf("\nwrote %s and %s\n", csv.c_str(), svg.c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "routing_comparison: %s\n", e.what());
  return 1;
}
