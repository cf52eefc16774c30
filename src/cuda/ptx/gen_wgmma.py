#!/usr/bin/env python3
"""Writes wgmma.cuh: the wgmma wrappers, m64nNk16 bf16 for each N in NS, from one template
(each wrapper needs N/2 accumulator operands spelled out). Run from src/cuda/ptx/."""
NS = [256, 192, 128]


def variant(n):
    regs = n // 2
    outs = ", ".join(f"%{i}" for i in range(regs))
    cons = ", ".join(f'"+f"(d[{i}])' for i in range(regs))
    a, b, s = regs, regs + 1, regs + 2
    return f'''
// D[64 x {n}] (+)= A[64 x 16] . B[{n} x 16]^T, A and B K-major in shared memory (descriptors),
// fp32 accumulators: {regs} per thread. scale_d = 0 overwrites D.
__device__ __forceinline__ void wgmma_m64n{n}k16_bf16(float (&d)[{regs}], std::uint64_t desc_a, std::uint64_t desc_b,
                                                      int scale_d) {{
  asm volatile(
      "{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{s}, 0;\\n"
      "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16 {{{outs}}}, %{a}, %{b}, p, 1, 1, 0, 0;\\n}}\\n"
      : {cons}
      : "l"(desc_a), "l"(desc_b), "r"(scale_d)
      : "memory");
}}
'''

if __name__ == "__main__":
    text = open("wgmma.cuh").read()
    head = text[: text.index("\n// D[64 x")]
    open("wgmma.cuh", "w").write(head + "".join(variant(n) for n in NS) + "\n}  // namespace tilemoe::ptx\n")
