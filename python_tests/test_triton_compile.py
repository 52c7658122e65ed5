"""Proof, without a GPU, that the Triton kernels compile to GPU code (sm_80 and sm_90): the
interpreter that runs them in CI skips Triton's type checks, layouts, LLVM and ptxas. On a
GPU the other Triton tests compile them for real."""
import os

import pytest
import torch

pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the Triton tests compile the kernels for real"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter replaces compilation"),
]
pytest.importorskip("triton.backends.nvidia")



def _compile_for(kernel, signature: dict, constexprs: dict, arch: int, num_warps: int):
    """Compiles a kernel to a cubin for `arch` without a GPU (what the interpreter skips:
    Triton's type checks, layouts, LLVM and ptxas)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sig = {**signature, **{name: "constexpr" for name in constexprs}}
    idx = {name: i for i, name in enumerate(kernel.arg_names)}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(idx[n],): v for n, v in constexprs.items()},
                    attrs={(idx[n],): [["tt.divisibility", 16]] for n, t in signature.items() if t.startswith("*")})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps))


# scale as fp64: what torch.compile (inductor) passes for a Python float.
# The mask and jagged layouts on the H200's arch only (each compile costs seconds).
@pytest.mark.parametrize("arch,dtype,d,k,scale,layouts", [(90, "bf16", 16, 128, "fp64", True),
                                                          (80, "fp16", 128, 64, "fp32", False),
                                                          (90, "fp32", 33, 1024, "fp32", False)])
def test_kernels_compile_for_gpu(arch, dtype, d, k, scale, layouts):
    from dare_kernels.triton_backend import kernels, search
    p = search.plan(1024, 10000, d, k, torch.device("cpu"), split=4, cfg=search.CONFIGS[0])
    base = {"q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "len_ptr": "*i64", "m_ptr": "*u8", "off_ptr": "*i32",
            "out_s_ptr": "*fp32", "out_i_ptr": "*i64", "okey_ptr": "*i32", "gmax_ptr": "*i32", "ticket_ptr": "*i32",
            "scratch_ptr": "*i64", "T": "i32", "L": "i32", "D": "i32",
            "k": "i32", "span": "i32", "scratch_stride": "i32", "scale": scale, "stride_kb": "i32",
            "stride_kl": "i32", "stride_mb": "i32", "stride_ml": "i32"}
    # (HAS_LEN, HAS_MASK, JAGGED): right padding, a mask with lengths, jagged rows (split
    # only: the longer kernel).
    padded, mask, jagged = (True, False, False), (True, True, False), (False, False, True)
    runs = [(False, padded), (True, padded)] + ([(True, mask), (True, jagged)] if layouts else [])
    for split, (has_len, has_mask, is_jagged) in runs:
        ck = _compile_for(kernels._search_kernel, base, dict(**p.fixed(), C=p.chunk(search.CONFIGS[0]),
                          HAS_LEN=has_len, HAS_MASK=has_mask, JAGGED=is_jagged, SPLIT=split), arch,
                          search.CONFIGS[0].num_warps)
        assert ck.asm["cubin"]
