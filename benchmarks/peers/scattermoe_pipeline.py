#!/usr/bin/env python3
"""The MoE layer forward with ScatterMoE (github.com/shawntan/scattermoe, Triton kernels), on the
inputs bench_moe_variants dumped, timed as torch_pipeline.py times PyTorch (warm-up, L2 flush
before each repeat, CUDA events, median).

Pipeline (bf16, as a ScatterMoE user writes it; cf. its GLUMLP): router logits in fp32 and the
preset's scores and top-k (torch_pipeline.route); then, with the routing bench_moe_variants used
(ids.bin, weights.bin, so the expert loads are identical), scattermoe.flatten_sort_count, one
parallel_linear with w13 (scattered in, grouped out), SwiGLU, one parallel_linear with w2 (grouped
in, scattered out, the routing weights as `gates`, summed over the top-k); shared experts as dense
matmuls. ScatterMoE keeps an expert's weight as [E, out, in] and passes its permute(0, 2, 1), which
is our w13 [E, 2n, d] and w2 [E, d, n] as they are (gate rows first: SwiGLU is silu(h[:, :n]) *
h[:, n:]). Weights come from the dump or are drawn as in torch_pipeline.py.

Before timing, the output of a few tokens is checked against a plain fp32 PyTorch reference
(relative error, printed; a case over 2e-2 prints no RESULT).

ScatterMoE is not installed: its Python source is put in .peers/scattermoe (git-ignored) and found
there, or at $SCATTERMOE_PATH (the folder holding the scattermoe package).

Usage: scattermoe_pipeline.py CASE_DIR [CASE_DIR ...]   prints "RESULT config tokens ms extra_bytes" per case
and writes CASE_DIR/scattermoe.json.
"""
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from torch_pipeline import (extra_bytes, kernel_table, load_case, median_ms, report, route,  # noqa: E402
                            router_logits_fn)

SCATTERMOE_PATH = os.environ.get("SCATTERMOE_PATH", os.path.join(HERE, "..", "..", ".peers", "scattermoe"))
TOL = 2e-2


def reference(x, ids, wts, w13, w2, n, shared, rows):
    """fp32 forward of the tokens `rows`, one (token, expert) pair at a time."""
    out = []
    for t in rows.tolist():
        xt = x[t].float()
        y = torch.zeros_like(xt)
        for k in range(ids.size(1)):
            e = int(ids[t, k])
            h = w13[e].float() @ xt
            y += wts[t, k].float() * (w2[e].float() @ (F.silu(h[:n]) * h[n:]))
        for sw13, sw2, ns in shared:
            h = sw13.float() @ xt
            y += sw2.float() @ (F.silu(h[:ns]) * h[ns:])
        out.append(y)
    return torch.stack(out)


def check_rows(c, got, rows):
    """Relative error of a forward's output rows `rows` (got) against reference() on case c (as
    load_case returns it); prints the CHECK line. Returns (rel, ok)."""
    shared = [(c.sw13[s], c.sw2[s], c.ns) for s in range(c.S)]
    want = reference(c.x, c.ids.long(), c.wts, c.w13, c.w2, c.n, shared, rows)
    rel = ((got - want).norm() / want.norm()).item()
    ok = rel <= TOL and bool(torch.isfinite(got).all())
    print(f"CHECK {c.meta['config']} {c.T} rel_err {rel:.3e} over {rows.numel()} tokens: {'ok' if ok else 'FAILED'}",
          flush=True)
    return rel, ok


def main():
    cases = sys.argv[1:]
    if not torch.cuda.is_available():
        print("scattermoe_pipeline: no CUDA GPU")
        return 2
    sys.path.insert(0, os.path.abspath(SCATTERMOE_PATH))
    try:
        import triton
        import scattermoe
        from scattermoe import flatten_sort_count, parallel_linear
    except Exception as e:  # noqa: BLE001
        print(f"scattermoe_pipeline: cannot import scattermoe from {SCATTERMOE_PATH}: {type(e).__name__}: {e}")
        return 2
    commit_file = os.path.join(SCATTERMOE_PATH, "COMMIT")
    commit = open(commit_file).read().strip() if os.path.exists(commit_file) else "unknown"
    print(f"scattermoe from {os.path.dirname(scattermoe.__file__)} ({commit}), torch {torch.__version__}, "
          f"triton {triton.__version__}", flush=True)

    eager = []

    def sort_count(ids, E):  # ScatterMoE's helper is torch.compile'd; its eager body where that fails
        if not eager:
            try:
                return flatten_sort_count(ids, num_experts=E)
            except Exception as e:  # noqa: BLE001
                print(f"scattermoe_pipeline: torch.compile of flatten_sort_count failed ({type(e).__name__}: {e}); eager")
                eager.append(True)
        with torch.no_grad():
            f = ids.flatten()
            s, i = torch.sort(f)
            return s, i, f.bincount(minlength=E).cumsum(-1)

    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    flush = torch.empty(2 * l2, dtype=torch.uint8, device="cuda")
    rc = 0
    for case in cases:
        c = load_case(case)
        meta, T, n, E, K, S, ns = c.meta, c.T, c.n, c.E, c.K, c.S, c.ns
        x, wr, bias, ids, wts = c.x, c.wr, c.bias, c.ids.long(), c.wts
        w13, w2, sw13, sw2 = c.w13, c.w2, c.sw13, c.sw2
        bf = torch.bfloat16
        w13_t = w13.permute(0, 2, 1)  # [E, d, 2n]: ParallelExperts passes weight.permute(0, 2, 1)
        w2_t = w2.permute(0, 2, 1)    # [E, n, d]
        router_logits = router_logits_fn(c)

        @torch.no_grad()
        def forward():
            logits = router_logits()
            route(logits, meta, bias)  # the router's work; the dumped routing is used below
            sei, ssi, offs = sort_count(ids, E)
            h = parallel_linear(x, w13_t, K, sei, ssi, offs, grouped_out=True)  # [T*K, 2n], grouped
            a = F.silu(h[:, :n]) * h[:, n:]
            out = parallel_linear(a, w2_t, 1, sei, ssi, offs, grouped_in=True, gates=wts.to(bf))  # [T, d]
            for s in range(S):
                hs = x @ sw13[s].t()
                out = out + (F.silu(hs[:, :ns]) * hs[:, ns:]) @ sw2[s].t()
            return out

        rows = torch.linspace(0, T - 1, 16, device="cuda").long()
        rel, ok = check_rows(c, forward()[rows].float(), rows)
        ms = median_ms(forward, flush, meta.get("reps", 10), meta.get("warmup", 3))
        extra = extra_bytes(forward)
        kernel_table(forward, f"scattermoe {meta['config']} T={T}")
        rc |= report("scattermoe_pipeline", c, "scattermoe", ms, extra, ok, rel_err=rel, scattermoe=commit,
                     triton=triton.__version__)
        del c, w13, w2, w13_t, w2_t, x, sw13, sw2
        torch.cuda.empty_cache()
    return rc


if __name__ == "__main__":
    sys.exit(main())
