#!/usr/bin/env python3
"""The MoE layer forward in PyTorch, on the inputs bench_moe_variants dumped, timed the same way
(warm-up, L2 flush before each repeat, CUDA events, median).

Pipeline (bf16, the usual eager PyTorch MoE): router logits in fp32 (x.float() @ Wr^T), scores
and top-k as the preset's router does (softmax / top-k-then-softmax / DeepSeek-V3 sigmoid with
bias and groups); then, with the routing bench_moe_variants used (ids.bin, weights.bin, so the
expert loads are identical), a stable argsort by expert, counts -> int32 end offsets, a gather of
x rows, torch._grouped_mm with w13, SwiGLU, torch._grouped_mm with w2, the routing weights in
fp32 and index_add_ into fp32 [T, d]; shared experts as dense matmuls. Weights come from the dump
or, for layers over 4 GiB of weights, are drawn here with the same shapes and scale (the values
do not change the timing).

Usage: torch_pipeline.py CASE_DIR [CASE_DIR ...]   prints "RESULT config tokens ms extra_bytes"
per case (extra_bytes: the peak device memory a forward allocates beyond its inputs, weights and
output) and writes CASE_DIR/torch_grouped_mm.json.
"""
import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F


def load(path, dtype, shape, device="cuda"):
    a = np.fromfile(path, dtype=np.uint16 if dtype == torch.bfloat16 else np.float32 if dtype == torch.float32 else np.int32)
    t = torch.from_numpy(a.reshape(shape))
    if dtype == torch.bfloat16:
        t = t.view(torch.bfloat16)
    return t.to(device)


def router_logits_fn(c):
    """The router logits as the case's router dtype has them computed: fp32 weights, an fp32 GEMM
    of x widened (fp32-accurate, as tilemoe's); bf16 weights (--router-dtype bf16), one bf16 GEMM
    (a bf16 nn.Linear, as PyTorch users run it), its output widened. The conversion is done here, outside the timing."""
    if c.meta.get("router_dtype", "fp32") == "bf16":
        wr_bf = c.wr.to(torch.bfloat16)
        return lambda: (c.x @ wr_bf.t()).float()
    return lambda: c.x.float() @ c.wr.t()


def load_case(case, device="cuda"):
    """One case bench_moe_variants dumped: meta.json's sizes, x [T, d] bf16, the fp32 router
    [E, d] and bias [E] (or None), the routing ids [T, K] int32 and weights [T, K] fp32, and the
    expert weights w13 [E, 2n, d], w2 [E, d, n] (shared: sw13 [S, 2ns, d], sw2 [S, d, ns], or None)
    in bf16, from the dump or, for layers too large to dump, drawn with the same shapes and scale
    (the values do not change the timing)."""
    meta = json.load(open(os.path.join(case, "meta.json")))
    T, d, n, E, K = meta["tokens"], meta["d"], meta["n"], meta["experts"], meta["topk"]
    S, ns = meta["shared"], meta["d_shared"]
    bf = torch.bfloat16
    f = lambda name: os.path.join(case, name)  # noqa: E731
    c = SimpleNamespace(case=case, meta=meta, T=T, d=d, n=n, E=E, K=K, S=S, ns=ns, sw13=None, sw2=None)
    c.x = load(f("x.bin"), bf, (T, d), device)
    c.wr = load(f("router.bin"), torch.float32, (E, d), device)
    c.bias = load(f("router_bias.bin"), torch.float32, (E,), device) if os.path.exists(f("router_bias.bin")) else None
    c.ids = load(f("ids.bin"), torch.int32, (T, K), device)
    c.wts = load(f("weights.bin"), torch.float32, (T, K), device)
    if meta["weights_dumped"]:
        c.w13 = load(f("w13.bin"), bf, (E, 2 * n, d), device)
        c.w2 = load(f("w2.bin"), bf, (E, d, n), device)
        if S:
            c.sw13 = load(f("shared_w13.bin"), bf, (S, 2 * ns, d), device)
            c.sw2 = load(f("shared_w2.bin"), bf, (S, d, ns), device)
    else:
        g = torch.Generator(device=device).manual_seed(0)
        c.w13 = torch.randn(E, 2 * n, d, device=device, generator=g, dtype=bf) / d ** 0.5
        c.w2 = torch.randn(E, d, n, device=device, generator=g, dtype=bf) / n ** 0.5
        if S:
            c.sw13 = torch.randn(S, 2 * ns, d, device=device, generator=g, dtype=bf) / d ** 0.5
            c.sw2 = torch.randn(S, d, ns, device=device, generator=g, dtype=bf) / ns ** 0.5
    return c


def median_ms(forward, flush, reps, warmup):
    """Median ms of forward() over reps, after warm-up, each after an L2 flush, by CUDA events."""
    for _ in range(warmup):
        forward()
    torch.cuda.synchronize()
    times = []
    a_ev, b_ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for i in range(reps):
        flush.fill_(i & 0xFF)
        a_ev.record()
        forward()
        b_ev.record()
        b_ev.synchronize()
        times.append(a_ev.elapsed_time(b_ev))
    return sorted(times)[len(times) // 2]


def kernel_table(forward, label, reps=5):
    """With TILEMOE_PEER_KERNELS=1 set: the GPU kernels of forward() under torch.profiler (CUPTI),
    per kernel name its launches and mean time per forward, largest total first, printed as lines
    after "KERNELS label" (warm L2, no flush: for where a peer's time goes, not for its total).
    Never fails the timing: an error is printed instead."""
    if os.environ.get("TILEMOE_PEER_KERNELS") != "1":
        return
    try:
        from torch.profiler import ProfilerActivity, profile
        forward()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                forward()
            torch.cuda.synchronize()
        rows = []
        for k in prof.key_averages():
            total = getattr(k, "device_time_total", None)
            if total is None:
                total = getattr(k, "cuda_time_total", 0.0)
            if total > 0:
                rows.append((total / reps, k.count / reps, k.key))
        rows.sort(reverse=True)
        print(f"KERNELS {label}: {sum(r[0] for r in rows):.1f} us of kernels per forward", flush=True)
        print(f"  {'us/fwd':>9} {'launches/fwd':>12}  kernel", flush=True)
        for us, count, name in rows[:20]:
            print(f"  {us:9.1f} {count:12.1f}  {name[:110]}", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"KERNELS {label}: not measured ({type(e).__name__}: {str(e)[:200]})", flush=True)


def extra_bytes(forward):
    """Device memory one forward allocates beyond what exists before it and its output (peak)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = forward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base - out.numel() * out.element_size()


def report(who, c, variant, ms, extra, ok=True, **fields):
    """The RESULT line bench_moe_variants reads (or why there is none, when the peer's check
    failed), and CASE_DIR/<variant>.json with the same figures and `fields`. Returns the exit
    status."""
    meta = c.meta
    if ok:
        print(f"RESULT {meta['config']} {c.T} {ms:.4f} {extra}", flush=True)
    else:
        print(f"{who}: {meta['config']} T={c.T}: {ms:.4f} ms not reported, the check failed", flush=True)
    json.dump({"config": meta["config"], "tokens": c.T, "variant": variant, "ms": ms, "extra_bytes": extra,
               "check_ok": ok, "torch": torch.__version__, "weights_dumped": meta["weights_dumped"], **fields},
              open(os.path.join(c.case, variant + ".json"), "w"))
    return 0 if ok else 1


def route(logits, meta, bias):
    E, K = meta["experts"], meta["topk"]
    kind = meta["router"]
    if kind == "topk_softmax":
        v, i = torch.topk(logits, K, dim=-1)
        return i, torch.softmax(v, dim=-1)
    if kind == "sigmoid_group_topk":
        s = torch.sigmoid(logits)
        c = s + bias if bias is not None else s
        G = 8 if E % 8 == 0 and E >= 64 else 1
        if G > 1:
            gs = c.view(-1, G, E // G).topk(2, dim=-1).values.sum(-1)
            keep = gs.topk(G // 2, dim=-1).indices
            mask = torch.zeros_like(gs).scatter_(1, keep, 1.0).repeat_interleave(E // G, dim=1)
            c = c.masked_fill(mask == 0, float("-inf"))
        i = c.topk(K, dim=-1).indices
        w = s.gather(1, i)
        return i, w / w.sum(-1, keepdim=True) * 2.5
    p = torch.softmax(logits, dim=-1)
    v, i = torch.topk(p, K, dim=-1)
    return i, v / v.sum(-1, keepdim=True)


def main():
    cases = sys.argv[1:]
    if not torch.cuda.is_available():
        print("torch_pipeline: no CUDA GPU")
        return 2
    if not hasattr(torch, "_grouped_mm"):
        print("torch_pipeline: this PyTorch has no torch._grouped_mm")
        return 2
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    flush = torch.empty(2 * l2, dtype=torch.uint8, device="cuda")
    for case in cases:
        c = load_case(case)
        meta, T, d, n, E, K, S, ns = c.meta, c.T, c.d, c.n, c.E, c.K, c.S, c.ns
        x, wr, bias, ids, wts = c.x, c.wr, c.bias, c.ids.long(), c.wts
        w13, w2, sw13, sw2 = c.w13, c.w2, c.sw13, c.sw2
        bf = torch.bfloat16
        w13_t = w13.transpose(1, 2)  # [E, d, 2n], the layout torch._grouped_mm wants for B
        w2_t = w2.transpose(1, 2)    # [E, n, d]
        router_logits = router_logits_fn(c)

        def forward():
            logits = router_logits()
            route(logits, meta, bias)  # the router's work; the dumped routing is used below
            flat = ids.reshape(-1)
            order = torch.argsort(flat, stable=True)
            offs = torch.cumsum(torch.bincount(flat, minlength=E), 0).to(torch.int32)
            tok = order // K
            xs = x.index_select(0, tok)
            h = torch._grouped_mm(xs, w13_t, offs=offs)
            a = F.silu(h[:, :n]) * h[:, n:]
            y = torch._grouped_mm(a, w2_t, offs=offs)
            out = torch.zeros(T, d, dtype=torch.float32, device="cuda")
            out.index_add_(0, tok, y.float() * wts.reshape(-1)[order].unsqueeze(1))
            for s in range(S):
                hs = x @ sw13[s].t()
                out += (F.silu(hs[:, :ns]) * hs[:, ns:]) @ sw2[s].t()
            return out.to(bf)

        ms = median_ms(forward, flush, meta.get("reps", 10), meta.get("warmup", 3))
        extra = extra_bytes(forward)
        kernel_table(forward, f"torch_grouped_mm {meta['config']} T={T}")
        report("torch_pipeline", c, "torch_grouped_mm", ms, extra)
        del c, w13, w2, w13_t, w2_t, x, sw13, sw2
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
