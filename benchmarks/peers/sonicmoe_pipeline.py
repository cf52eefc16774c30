#!/usr/bin/env python3
"""The MoE layer forward with SonicMoE (PyPI sonic-moe: QuACK / CuTe-DSL grouped GEMMs, arXiv
2512.14080), on the inputs bench_moe_variants dumped, timed as torch_pipeline.py times PyTorch
(warm-up, L2 flush before each repeat, CUDA events, median).

Two ways in, as SonicMoE offers them:
- routers SonicMoE has (softmax then top-k with or without renormalizing, top-k then softmax):
  its whole layer, `moe_TC_softmax_topk_layer` (bf16 router GEMM, its top-k kernel, its
  metadata, the up-projection with the gather and SwiGLU fused, the down-projection, its
  gather-and-sum over k), in inference mode. Its routing is its own (bf16 logits), so expert
  loads are drawn from the same distribution as ours but are not the same assignments.
- other routers (DeepSeek-V3's sigmoid with groups): router logits in fp32 and the preset's
  scores and top-k in PyTorch (torch_pipeline.route), then `moe_general_routing_inputs` with the
  routing bench_moe_variants used (ids.bin, weights.bin).
Shared experts are dense matmuls. SonicMoE wants w1 as (2n, d, E) with E outermost and, by
default, gate and up rows interleaved; w2 as (d, n, E): both are re-laid out once from our
w13 [E, 2n, d] (gate rows first) and w2 [E, d, n], outside the timing. gpt-oss's clamped SwiGLU
runs as SwiGLU (SonicMoE has no clamp); the check uses SwiGLU too.

Before timing, the general-routing path (the same kernels, the dumped routing) is checked on a
few tokens against a plain fp32 PyTorch reference (relative error, printed; over 2e-2 prints no
RESULT).

SonicMoE is not installed on the GPU machine: its wheels and their dependencies travel with the
call (scripts/gpu_check.sh unpacks .sonic/ when it is there).

Usage: sonicmoe_pipeline.py CASE_DIR [CASE_DIR ...]   prints "RESULT config tokens ms extra_bytes" per case
and writes CASE_DIR/sonicmoe.json.
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from scattermoe_pipeline import check_rows  # noqa: E402
from torch_pipeline import (extra_bytes, kernel_table, load_case, median_ms, report, route,  # noqa: E402
                            router_logits_fn)


def swiglu_shared(x, sw13, sw2, ns):
    import torch.nn.functional as F
    hs = x @ sw13.t()
    return (F.silu(hs[:, :ns]) * hs[:, ns:]) @ sw2.t()


def main():
    cases = sys.argv[1:]
    if not torch.cuda.is_available():
        print("sonicmoe_pipeline: no CUDA GPU")
        return 2
    try:
        import sonicmoe
        from sonicmoe.enums import ActivationType
        from sonicmoe.functional import moe_general_routing_inputs, moe_TC_softmax_topk_layer
    except Exception as e:  # noqa: BLE001
        print(f"sonicmoe_pipeline: cannot import sonicmoe: {type(e).__name__}: {e}")
        return 2
    from importlib.metadata import version
    versions = {p: version(p) for p in ("sonic-moe", "quack-kernels", "nvidia-cutlass-dsl")}
    print(f"sonicmoe from {os.path.dirname(sonicmoe.__file__)} ({versions}), torch {torch.__version__}", flush=True)

    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    flush = torch.empty(2 * l2, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    swiglu = ActivationType.SWIGLU
    rc = 0
    for case in cases:
        c = load_case(case)
        meta, T, d, n, E, K, S, ns = c.meta, c.T, c.d, c.n, c.E, c.K, c.S, c.ns
        if not meta.get("gated", True):
            print(f"sonicmoe_pipeline: {meta['config']}: SonicMoE runs gated activations only; skipped")
            continue
        x, wr, bias, ids, wts = c.x, c.wr, c.bias, c.ids, c.wts
        w13, w2, sw13, sw2 = c.w13, c.w2, c.sw13, c.sw2
        bf = torch.bfloat16
        # SonicMoE's layouts: w1 (2n, d, E) with rows gate0, up0, gate1, up1, ...; w2 (d, n, E).
        w1 = torch.stack((w13[:, :n], w13[:, n:]), dim=2).reshape(E, 2 * n, d).permute(1, 2, 0)
        w2s = w2.permute(1, 2, 0)
        wr_bf = wr.to(bf)
        router_logits = router_logits_fn(c)

        def shared_out(out):
            for s in range(S):
                out = out + swiglu_shared(x, sw13[s], sw2[s], ns)
            return out

        tok_idx = torch.arange(T, device="cuda", dtype=torch.int32).repeat_interleave(K)

        @torch.no_grad()
        def forward_general(route_too=True):
            if route_too:
                route(router_logits(), meta, bias)  # the router's work; the dumped routing is used below
            o, _ = moe_general_routing_inputs(x, wts.reshape(-1), tok_idx, ids.reshape(-1), w1, None, w2s, None, E,
                                              stream, swiglu, True)
            return shared_out(o)

        tc = meta["router"] in ("softmax_topk", "topk_softmax")

        @torch.no_grad()
        def forward_tc():
            o, _, _ = moe_TC_softmax_topk_layer(x, wr_bf, w1, None, w2s, None, K, stream, swiglu, True,
                                                meta["router"] == "topk_softmax", bool(meta.get("renormalize", True)))
            return shared_out(o)

        forward = forward_tc if tc else forward_general
        mode = "moe_TC_softmax_topk_layer (its router)" if tc else "torch router + moe_general_routing_inputs"
        try:
            rows = torch.linspace(0, T - 1, 16, device="cuda").long()
            rel, ok = check_rows(c, forward_general(False)[rows].float(), rows)
            ms = median_ms(forward, flush, meta.get("reps", 10), meta.get("warmup", 3))
            extra = extra_bytes(forward)
            kernel_table(forward, f"sonicmoe {meta['config']} T={T}")
        except Exception as e:  # noqa: BLE001
            print(f"sonicmoe_pipeline: {meta['config']} T={T}: {type(e).__name__}: {str(e)[:400]}", flush=True)
            rc = 1
            continue
        print(f"  ({mode})", flush=True)
        rc |= report("sonicmoe_pipeline", c, "sonicmoe", ms, extra, ok, rel_err=rel, mode=mode, versions=versions)
        del c, w13, w2, w1, w2s, x, sw13, sw2
        torch.cuda.empty_cache()
    return rc


if __name__ == "__main__":
    sys.exit(main())
