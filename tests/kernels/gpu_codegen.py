"""Ahead-of-time GPU code generation of every Triton kernel, without a GPU.

Run as a script in a process where TRITON_INTERPRET is not set (the kernels must be real JIT functions):

    python -m tests.kernels.gpu_codegen [--quick] [ARCH ...]      # ARCH: 80 (Ampere), 90 (Hopper); default both

Each kernel is lowered through Triton's NVIDIA backend to PTX and assembled by the ptxas that ships with
the triton wheel, for every constexpr variant the launchers use and every autotuning tile of the GEMMs.
This catches what the CPU interpreter cannot: type and layout errors of the real code generator (int8
tensor-core dots, constexpr branches, 64-bit integer code). It runs nothing, so it says nothing about
values or speed. Prints one line per failure and ``compiled N of M``; exit status 1 on any failure.
"""

from __future__ import annotations

import sys


def _ptr(t: str) -> str:
    return "*" + t


def cases(quick: bool = False) -> list:
    """(kernel, {arg: type}, {constexpr: value}) for every variant the launchers use."""
    from mmfree.pymodel.kernels import _triton as TT
    from mmfree.pymodel.kernels import bitlinear as FB
    from mmfree.pymodel.kernels import bitlinear_hw as HW
    from mmfree.pymodel.kernels import hgrn as HG
    from mmfree.pymodel.kernels import ifg as IFG

    P = _ptr
    out = []
    for xdt in (("bf16",) if quick else ("fp32", "bf16")):
        out.append((FB._act_quant_kernel, dict(X=P(xdt), NW=P("fp32"), Q=P("i8"), RSTD=P("fp32"), S=P("fp32"),
                                               M="i32", K="i32", stride_x="i32", stride_q="i32", eps="fp32"),
                    dict(ROUND_Y=xdt == "bf16", STORE_Q=True, EMU=False, BLOCK_M=1, BLOCK_K=2048)))
    for xdt in (("bf16",) if quick else ("fp32", "bf16")):
        out.append((IFG._act_quant_multi_kernel, dict(X=P(xdt), NW=P("fp32"), Q=P("i8"), RSTD=P("fp32"), S=P("fp32"),
                                                      M="i32", K="i32", stride_x="i32", eps="fp32"),
                    dict(P=3, ROUND_Y=xdt == "bf16", STORE_Q=True, EMU=False, BLOCK_M=1, BLOCK_K=2048)))
    out.append((FB._ternarize_kernel, dict(W=P("fp32"), SW=P("fp32"), T=P("i8"), numel="i32"), dict(BLOCK=1024)))
    tiles = {k: [c.kwargs for c in v] for k, v in TT.GEMM_CONFIGS.items()}
    if quick:
        tiles = {k: v[:1] for k, v in tiles.items()}
    for odt in (("bf16",) if quick else ("bf16", "fp32")):
        for t in tiles["int8"]:
            out.append((FB._fwd_gemm_kernel, dict(Q=P("i8"), T=P("i8"), S=P("fp32"), SW=P("fp32"), OUT=P(odt), M="i32",
                                                  N="i32", K="i32", stride_q="i32", stride_t="i32", stride_o="i32"),
                        dict(EMU=False, **t)))
    for gdt, prec in ((("bf16", "tf32"),) if quick else (("bf16", "tf32"), ("fp32", "ieee"), ("fp32", "tf32"))):
        for t in tiles["dy"]:
            out.append((FB._bwd_dy_kernel, dict(G=P(gdt), T=P("i8"), SW=P("fp32"), DY=P(gdt), M="i32", N="i32", K="i32",
                                                stride_g="i32", stride_t="i32", stride_dy="i32"),
                        dict(PRECISION=prec, EMU=False, **t)))
        for t in tiles["dw"]:
            out.append((FB._bwd_dw_kernel, dict(G=P(gdt), Q=P("i8"), S=P("fp32"), DW=P("fp32"), M="i32", N="i32", K="i32",
                                                stride_g="i32", stride_q="i32", stride_dw="i32"),
                        dict(PRECISION=prec, EMU=False, **t)))
    for xdt in (("bf16",) if quick else ("fp32", "bf16")):
        out.append((FB._norm_bwd_kernel, dict(X=P("fp32"), NW=P("fp32"), DY=P(xdt), RSTD=P("fp32"), DX=P(xdt),
                                              DNW=P("fp32"), M="i32", K="i32", stride_x="i32", stride_dy="i32",
                                              stride_dx="i32", rows_per_program="i32"),
                    dict(EMU=False, BLOCK_K=2048)))
    out.append((HW._hw_quant_kernel, dict(U=P("i64"), NV=P("i64"), NWV=P("i64"), RSQ=P("i64"), CODES=P("i8"), PP=P("i64"),
                                          SS=P("i64"), MUL=P("i64"), SHIFT=P("i64"), M="i32", K="i32", stride_u="i32",
                                          stride_c="i32", c_m="i32", c_e="i32"),
                dict(**HW._SPEC, BLOCK_M=2, BLOCK_K=2048)))
    for t in tiles["int8"]:
        out.append((HW._hw_gemm_kernel, dict(CODES=P("i8"), T=P("i8"), MUL=P("i64"), SHIFT=P("i64"), OUT=P("i32"),
                                             M="i32", N="i32", K="i32", stride_c="i32", stride_t="i32", stride_o="i32"),
                    dict(**t)))
    seq = dict(A=P("bf16"), Bv=P("bf16"), LB=P("fp32"), H0=P("fp32"), O=P("bf16"), T="i32", D="i32")
    chunk = dict(A=P("bf16"), Bv=P("bf16"), LB=P("fp32"), T="i32", D="i32", NC="i32")
    variants = [(True, True, True)] if quick else [(False, False, False), (False, False, True), (True, False, False),
                                                  (True, True, False), (True, True, True)]
    for gated, use_lb, h0 in variants:
        flags = dict(GATED=gated, USE_LB=use_lb)
        out += [
            (HG._fwd_seq_kernel, seq, dict(flags, HAS_H0=h0, EMU=False, BLOCK_D=128)),
            (HG._bwd_seq_kernel, dict(seq, DO=P("bf16"), DA=P("bf16"), DB=P("bf16"), DH0=P("fp32"), DLB=P("fp32")),
             dict(flags, HAS_H0=h0, EMU=False, BLOCK_D=128)),
            (HG._fwd_chunk_local_kernel, dict(chunk, AP=P("fp32"), HL=P("fp32")), dict(flags, CH=64, BLOCK_D=128)),
            (HG._fwd_chunk_final_kernel, dict(chunk, CARRY=P("fp32"), O=P("bf16")),
             dict(flags, EMU=False, CH=64, BLOCK_D=128)),
            (HG._bwd_chunk_local_kernel, dict(chunk, DO=P("bf16"), AP=P("fp32"), EL=P("fp32")),
             dict(flags, CH=64, BLOCK_D=128)),
            (HG._bwd_chunk_final_kernel, dict(chunk, H0=P("fp32"), O=P("bf16"), DO=P("bf16"), CARRY=P("fp32"),
                                              DA=P("bf16"), DB=P("bf16"), DLB=P("fp32")),
             dict(flags, HAS_H0=h0, EMU=False, CH=64, BLOCK_D=128)),
        ]
    out += [
        (HG._fwd_chunk_carry_kernel, dict(AP=P("fp32"), HL=P("fp32"), H0=P("fp32"), CARRY=P("fp32"), D="i32", NC="i32"),
         dict(HAS_H0=True, BLOCK_D=128)),
        (HG._bwd_chunk_carry_kernel, dict(AP=P("fp32"), EL=P("fp32"), CARRY=P("fp32"), DH0=P("fp32"), D="i32", NC="i32"),
         dict(HAS_H0=True, EMU=False, BLOCK_D=128)),
        (HG._hw_scan_kernel, dict(S=P("i64"), G=P("i64"), H0=P("i64"), H=P("i64"), T="i32", D="i32"),
         dict(HAS_H0=True, SIG_FRAC=31, BLOCK_D=128)),
    ]
    if quick:     # the riskiest code generation: int8 and bf16 tensor-core dots, int64 arithmetic, the gated scan
        keep = (FB._fwd_gemm_kernel, FB._bwd_dy_kernel, FB._bwd_dw_kernel, HW._hw_quant_kernel, HG._bwd_seq_kernel)
        out = [c for c in out if c[0] in keep]
    return out


def compile_one(kernel, types: dict, consts: dict, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    consts = {k: v for k, v in consts.items() if k in fn.arg_names}
    sig = {name: ("constexpr" if name in consts else types[name]) for name in fn.arg_names}
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", arch, 32))


def main(argv=None) -> int:
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the kernels must be real JIT functions", file=sys.stderr)
        return 2
    quick = "--quick" in argv
    archs = [int(a) for a in argv if a != "--quick"] or [80, 90]
    todo = cases(quick)
    bad = 0
    for kernel, types, consts in todo:
        for arch in archs:
            try:
                compile_one(kernel, types, consts, arch)
            except Exception as exc:                         # report every failure, then fail
                bad += 1
                name = getattr(getattr(kernel, "fn", kernel), "__name__", str(kernel))
                print(f"FAIL {name} sm_{arch} {consts}: {type(exc).__name__}: {str(exc)[:2000]}")
    print(f"compiled {len(todo) * len(archs) - bad} of {len(todo) * len(archs)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
