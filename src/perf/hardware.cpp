// Hardware presets (datasheet peaks, dense, no 2:4 sparsity) with the achievable ceilings the
// model predicts with, and hardware files.
#include <cmath>

#include "perf/kv_file.hpp"
#include "tilemoe/error.hpp"
#include "tilemoe/perf_model.hpp"

namespace tilemoe::perf {

namespace {

// Our measurements (PyTorch 2.11, median of 10, bf16 GEMM 8192^3 and a device-to-device copy),
// on the project's GPU machines. Cards we have not measured get the H100's achieved/peak ratios.
constexpr double kH100GemmRatio = 743.0 / 989.0;  // 0.751
constexpr double kH100CopyRatio = 2.95 / 3.35;    // 0.881

std::vector<Hardware> build() {
  std::vector<Hardware> v;
  {
    // NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16 1,979 TFLOPS with sparsity = 989
    // dense; FP8 3,958 sparse = 1,979 dense; 80 GB HBM3, 3.35 TB/s; NVLink 900 GB/s.
    Hardware h;
    h.name = "h100";
    h.description = "NVIDIA H100 SXM5 80GB";
    h.bf16_tflops = 989; h.fp8_tflops = 1979; h.hbm_gb = 80; h.hbm_tbps = 3.35; h.nvlink_gbps = 900;
    h.achievable_bf16_tflops = 743; h.achievable_hbm_tbps = 2.95;
    h.source = "NVIDIA H100 datasheet (SXM5), dense figures";
    h.achievable_source = "measured on our H100 80GB HBM3: bf16 GEMM 8192^3 743 TFLOP/s, device copy 2.95 TB/s (PyTorch 2.11, median of 10)";
    v.push_back(h);
  }
  {
    // Same datasheet, PCIe column: BF16 1,513 sparse = 756 dense; FP8 3,026 sparse = 1,513;
    // 80 GB, 2.0 TB/s; NVLink bridge 600 GB/s.
    Hardware h;
    h.name = "h100-pcie";
    h.description = "NVIDIA H100 PCIe 80GB";
    h.bf16_tflops = 756; h.fp8_tflops = 1513; h.hbm_gb = 80; h.hbm_tbps = 2.0; h.nvlink_gbps = 600;
    h.achievable_bf16_tflops = 756 * kH100GemmRatio; h.achievable_hbm_tbps = 2.0 * kH100CopyRatio;
    h.source = "NVIDIA H100 datasheet (PCIe), dense figures; NVLink through the bridge";
    h.achievable_source = "derived: datasheet x the H100 SXM measured ratios (GEMM 0.751, copy 0.881), not measured";
    v.push_back(h);
  }
  {
    // NVIDIA H200 datasheet (SXM): same tensor cores as H100 (989 / 1,979 dense), 141 GB HBM3e,
    // 4.8 TB/s, NVLink 900 GB/s.
    Hardware h;
    h.name = "h200";
    h.description = "NVIDIA H200 SXM 141GB";
    h.bf16_tflops = 989; h.fp8_tflops = 1979; h.hbm_gb = 141; h.hbm_tbps = 4.8; h.nvlink_gbps = 900;
    h.achievable_bf16_tflops = 748; h.achievable_hbm_tbps = 4.3;
    h.source = "NVIDIA H200 datasheet (SXM), dense figures";
    h.achievable_source = "measured on our H200: bf16 GEMM 8192^3 748 TFLOP/s, device copy 4.3 TB/s (PyTorch 2.11, median of 10)";
    v.push_back(h);
  }
  {
    // NVIDIA A100 datasheet (SXM 80GB): BF16 312 TFLOPS dense, no FP8, 80 GB HBM2e 2,039 GB/s,
    // NVLink 600 GB/s.
    Hardware h;
    h.name = "a100";
    h.description = "NVIDIA A100 SXM4 80GB";
    h.bf16_tflops = 312; h.fp8_tflops = 0; h.hbm_gb = 80; h.hbm_tbps = 2.039; h.nvlink_gbps = 600;
    h.network_gbps = 25;  // HDR InfiniBand 200 Gb/s per GPU, the A100 generation's fabric
    h.achievable_bf16_tflops = 312 * kH100GemmRatio; h.achievable_hbm_tbps = 2.039 * kH100CopyRatio;
    h.source = "NVIDIA A100 datasheet (SXM 80GB), dense figures; HDR 200 Gb/s network";
    h.achievable_source = "derived: datasheet x the H100 SXM measured ratios (GEMM 0.751, copy 0.881), not measured";
    v.push_back(h);
  }
  {
    // NVIDIA HGX B200 datasheet: FP8 9 PFLOPS and BF16 4.5 PFLOPS with sparsity = 4,500 and
    // 2,250 dense; 8 TB/s; NVLink 5 1.8 TB/s. Memory 192 GB per GPU (the HGX datasheet lists
    // 180 GB usable and 7.7 TB/s on some SKUs).
    Hardware h;
    h.name = "b200";
    h.description = "NVIDIA B200 192GB";
    h.bf16_tflops = 2250; h.fp8_tflops = 4500; h.hbm_gb = 192; h.hbm_tbps = 8.0; h.nvlink_gbps = 1800;
    h.achievable_bf16_tflops = 2250 * kH100GemmRatio; h.achievable_hbm_tbps = 8.0 * kH100CopyRatio;
    h.source = "NVIDIA HGX B200 datasheet, dense figures (192 GB; 180 GB usable on some SKUs)";
    h.achievable_source = "derived: datasheet x the H100 SXM measured ratios (GEMM 0.751, copy 0.881), not measured";
    v.push_back(h);
  }
  // Inter-node: 400 Gb/s per GPU (InfiniBand NDR, one NIC per GPU) = 50 GB/s each direction,
  // the default in Hardware. comm_efficiency 0.8: DeepEP (deepseek-ai/DeepEP README) reaches
  // ~153 GB/s of the ~160 GB/s NVLink ceiling on H800 (400 GB/s both directions) and 43-58 GB/s
  // over 50 GB/s RDMA, i.e. about 0.8 of one direction's datasheet bandwidth.
  return v;
}

}  // namespace

void Hardware::validate() const {
  check_arg(bf16_tflops > 0, "bf16_tflops", bf16_tflops, "> 0");
  check_arg(fp8_tflops >= 0, "fp8_tflops", fp8_tflops, ">= 0 (0: no fp8)");
  check_arg(hbm_gb > 0, "hbm_gb", hbm_gb, "> 0");
  check_arg(hbm_tbps > 0, "hbm_tbps", hbm_tbps, "> 0");
  check_arg(nvlink_gbps > 0, "nvlink_gbps", nvlink_gbps, "> 0");
  check_arg(network_gbps > 0, "network_gbps", network_gbps, "> 0");
  check_arg(gpus_per_node >= 1, "gpus_per_node", gpus_per_node, ">= 1");
  check_arg(achievable_bf16_tflops > 0 && achievable_bf16_tflops <= bf16_tflops,
            "achievable_bf16_tflops", achievable_bf16_tflops,
            detail::concat("0 < achievable <= bf16_tflops (", bf16_tflops, ")"));
  check_arg(achievable_hbm_tbps > 0 && achievable_hbm_tbps <= hbm_tbps, "achievable_hbm_tbps",
            achievable_hbm_tbps, detail::concat("0 < achievable <= hbm_tbps (", hbm_tbps, ")"));
  check_arg(comm_efficiency > 0 && comm_efficiency <= 1, "comm_efficiency", comm_efficiency,
            "0 < comm_efficiency <= 1");
}

double Hardware::achievable_fp8_tflops() const {
  return fp8_tflops * (achievable_bf16_tflops / bf16_tflops);
}

const std::vector<Hardware>& hardware_presets() {
  static const std::vector<Hardware> all = build();
  return all;
}

std::vector<std::string> hardware_names() {
  std::vector<std::string> names;
  for (const auto& h : hardware_presets()) names.push_back(h.name);
  return names;
}

static const Hardware* find_preset(std::string_view name) {
  for (const auto& h : hardware_presets())
    if (h.name == name) return &h;
  return nullptr;
}

static std::string names_list() {
  std::string list;
  for (const auto& n : hardware_names()) list += (list.empty() ? "" : ", ") + n;
  return list;
}

Hardware load_hardware(std::string_view name_or_file) {
  if (const Hardware* h = find_preset(name_or_file)) return *h;
  if (!is_file(name_or_file))
    throw InvalidArgument(detail::concat("--hardware = '", name_or_file, "': expected one of ",
                                         names_list(), " or a hardware file"));
  const std::string path(name_or_file);
  const std::string what = detail::concat("hardware file '", path, "'");
  const KeyValues kv = read_key_values(path);
  Hardware h;
  if (kv.count("base")) {
    const Hardware* b = find_preset(kv.at("base"));
    if (!b)
      throw InvalidArgument(detail::concat(what, ": base = '", kv.at("base"), "': expected one of ", names_list()));
    h = *b;
  }
  h.name = path;
  h.source = path;
  for (const auto& [k, v] : kv) {
    if (k == "base") continue;
    else if (k == "name") h.name = v;
    else if (k == "description") h.description = v;
    else if (k == "source") h.source = v;
    else if (k == "achievable_source") h.achievable_source = v;
    else if (k == "bf16_tflops") h.bf16_tflops = kv_double(kv, k, what);
    else if (k == "fp8_tflops") h.fp8_tflops = kv_double(kv, k, what);
    else if (k == "hbm_gb") h.hbm_gb = kv_double(kv, k, what);
    else if (k == "hbm_tbps") h.hbm_tbps = kv_double(kv, k, what);
    else if (k == "nvlink_gbps") h.nvlink_gbps = kv_double(kv, k, what);
    else if (k == "network_gbps") h.network_gbps = kv_double(kv, k, what);
    else if (k == "gpus_per_node") h.gpus_per_node = static_cast<int>(kv_int(kv, k, what));
    else if (k == "comm_efficiency") h.comm_efficiency = kv_double(kv, k, what);
    else if (k == "achievable_bf16_tflops") h.achievable_bf16_tflops = kv_double(kv, k, what);
    else if (k == "achievable_hbm_tbps") h.achievable_hbm_tbps = kv_double(kv, k, what);
    else
      throw InvalidArgument(detail::concat(
          what, ": key '", k, "' unknown (expected base, name, description, source, bf16_tflops, "
          "fp8_tflops, hbm_gb, hbm_tbps, nvlink_gbps, network_gbps, gpus_per_node, comm_efficiency, "
          "achievable_bf16_tflops, achievable_hbm_tbps, achievable_source)"));
  }
  if (h.description.empty()) h.description = h.name;
  // Without a measured ceiling (given here, or inherited from an unchanged base preset), take
  // the H100's achieved/peak ratio and say so.
  bool derived = false;
  if (!kv.count("achievable_bf16_tflops") && (!kv.count("base") || kv.count("bf16_tflops"))) {
    h.achievable_bf16_tflops = h.bf16_tflops * kH100GemmRatio;
    derived = true;
  }
  if (!kv.count("achievable_hbm_tbps") && (!kv.count("base") || kv.count("hbm_tbps"))) {
    h.achievable_hbm_tbps = h.hbm_tbps * kH100CopyRatio;
    derived = true;
  }
  if (derived && !kv.count("achievable_source"))
    h.achievable_source = "derived: peaks x the H100 SXM measured ratios (GEMM 0.751, copy 0.881), not measured";
  h.validate();
  return h;
}

}  // namespace tilemoe::perf
