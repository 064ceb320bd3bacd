"""The Triton kernels compile for a CUDA target (sm_90) without a GPU, and their register use:
every kernel variant the plans of the given maps launch, in a fresh interpreter without
``TRITON_INTERPRET`` (the interpreter accepts Python that Triton's compiler rejects)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="the kernels need Triton (it ships with the torch wheel)")


# Compiles every kernel variant that the launches of the given maps use to a CUDA binary for
# sm_90, in a fresh interpreter without TRITON_INTERPRET (the interpreter accepts Python that
# Triton's compiler rejects, and CI has no GPU to find out), and reads each binary's resource
# usage with the cuobjdump that ships with Triton: registers, and the stack frame and local
# memory that hold register spills.
_COMPILE_FOR_CUDA = """
import json, os, re, subprocess, sys, tempfile
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from arma_plugin.layers import ar_solve_triton as host, ar_solve_triton_chunks as chunks
from arma_plugin.layers import ar_solve_triton_kernels as kernels, ar_solve_triton_walks as walks

assert not host.INTERPRETED
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def usage(kernel, pointers, consts, options):
    signature = {name: "constexpr" if name in consts else "*" + pointers[name] if name in pointers else "i32"
                 for name in kernel.arg_names}
    compiled = triton.compile(ASTSource(kernel, signature, consts), target=GPUTarget("cuda", ARCH, 32),
                              options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        dump = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], check=True, capture_output=True,
                              text=True).stdout
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|LOCAL):(\\d+)", dump)}


ARCH = int(sys.argv[2])
rows = []
for h, w, dilation, circular, data, q, reparam, channels, fused, per_pass, line in json.loads(sys.argv[1]):
    acc = tl.float64 if data == "fp64" else tl.float32
    work = "fp64" if data == "fp64" else "fp32"
    sector = {"fp64": 4, "fp32": 8, "bf16": 16}[data]
    lines = {} if line is None else dict(line_positions=line, line_elements=line, chunk_elements=line)
    limits = {key: value for key, value in dict(fused_elements=fused, pass_elements=per_pass,
                                                walk_solve_elements=per_pass and 2 * per_pass).items() if value}
    tiling = host.Tiling(**limits, **lines)
    weight = host.register_weight(8 if data == "fp64" else 4, q)
    walk_weight = host.walk_weight(q, None if ARCH == 90 else divmod(ARCH, 10))
    plan = host._plan(h, w, dilation, circular, channels, sector, tiling, weight,
                      walk_weight if data == "fp32" else None)  # walks: float32 only
    two_pass = len(plan) == 2
    for step in plan:
        consts = dict(Q=q, QP=triton.next_power_of_2(q), CIRCULAR=circular, REPARAM=reparam, ACC=acc,
                      **step.constants())
        walk = isinstance(step, host._Walk)
        options = host.launch_options(step, q, 8 if data == "fp64" else 4)
        name = f"{h}x{w} d{dilation} {'circular' if circular else 'zeros'} {data} Q{q} {step.constants()}"
        if walk:  # X and dY in, Y and dX out, a float32 (float64) work buffer
            forward = usage(walks.walked_forward_kernel, dict(src=data, work=work, dst=data, alpha=data), consts,
                            options)
            backward = usage(walks.walked_backward_kernel,
                             dict(src=data, grad=data, work=work, dst=data, alpha=data, partial=work),
                             dict(consts, **step.constants(backward=True)), options)
            rows += [(name + " forward", forward), (name + " backward", backward)]
            continue
        # the pointer types of the host's launches: a two-pass plan's H pass writes the float32
        # (float64) state, its W pass reads it; the backward's W pass reads the state and writes
        # its gradient, which the H pass reads with X if X is narrower (else the state: SRC_SOLVED)
        forward_io = dict(src=work if two_pass and not step.solve_h else data,
                          dst=work if two_pass and step.solve_h else data)
        from_x = not two_pass or data == "bf16"
        backward_io = dict(src=data if step.solve_h and from_x else work if two_pass else data,
                           grad=work if two_pass and step.solve_h else data,
                           dst=work if two_pass and not step.solve_h else data)
        backward_consts = dict(consts, SRC_SOLVED=two_pass and step.solve_h and not from_x)
        if isinstance(step, host._ChunkedPass):
            forward = usage(chunks.chunked_forward_kernel, dict(forward_io, work=work, alpha=data), consts, options)
            backward = usage(chunks.chunked_backward_kernel,
                             dict(backward_io, work_y=work, work_z=work, work_g=work, alpha=data, partial=work),
                             backward_consts, options)
        else:
            forward = usage(kernels.forward_kernel, dict(forward_io, alpha=data), consts, options)
            backward = usage(kernels.backward_kernel, dict(backward_io, alpha=data, partial=work),
                             backward_consts, options)
        rows += [(name + " forward", forward), (name + " backward", backward)]
    rows.append((f"tap gradients Q{q} reparam={reparam}", usage(
        kernels.tap_gradient_kernel, dict(partial="fp32", alpha=data, grad_alpha=data),
        dict(Q=q, QP=triton.next_power_of_2(q), REPARAM=reparam, ACC=acc, ROWS=256), dict(num_warps=4))))
print(json.dumps(rows))
"""


def _compile_for_cuda(variants, arch: int = 90) -> list:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _COMPILE_FOR_CUDA, json.dumps(variants), str(arch)], env=env,
                            capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


# (H, W, dilation, circular, data type, Q, reparam, channels per program, fused elements,
# elements per pass (a walk's first solve: twice that), longest line before chunks (None: the
# default Tiling's))
SMALL_VARIANTS = [(9, 40, 2, False, "bf16", 2, False, 1, None, None, None),
                  (7, 7, 1, True, "fp32", 1, True, 8, None, None, None),
                  (24, 40, 2, False, "fp32", 2, True, 1, 256, 64, 16),
                  (24, 40, 1, True, "fp32", 1, True, 1, 256, 64, None),
                  (24, 40, 1, True, "bf16", 3, True, 1, 256, 64, None)]


@pytest.mark.parametrize("variant", [SMALL_VARIANTS[0], SMALL_VARIANTS[1], SMALL_VARIANTS[2], SMALL_VARIANTS[3],
                                     pytest.param(SMALL_VARIANTS[4], marks=pytest.mark.slow)],
                         ids=["fused-dilated-bf16-zeros", "fused-channels_last-fp32-circular",
                              "chunked-dilated-fp32-zeros", "walk-fp32-circular", "two-pass-bf16-circular"])
def test_kernels_compile_for_a_cuda_target_without_spills(variant):
    """Small tiles (fused with two chains per axis; a channels_last block of 8 channels; both
    passes of the two-pass plan, whole lines and lines in chunks; a float32 plane walked by
    one program; both boundaries, reparam on and off): every kernel compiles for sm_90, with
    no spills to local memory (10-30 s per kernel on 2 cores)."""
    for name, resources in _compile_for_cuda([variant]):
        assert resources.get("STACK", 0) == 0 and resources.get("LOCAL", 0) == 0, (name, resources)


# The maps' default plans (fused and per-pass limits None: the defaults): float32 NCHW 128²
# walked by one program (Q = 1 both boundaries, Q = 2 and 3 with dilation 2), 64×128 and a
# 100×160 map walked with dilation 3; 128² bfloat16 and 128×256 float32 in two passes (NCHW),
# channels_last blocks of 8 float32 or 16 bfloat16 channels of 128² in two passes, 64² in one
# program (dilation 2 and 3, Q = 2 and 3), float64 in two passes (64² Q = 3, 128²) and in one
# program (d = 2, Q = 2; half the elements per tile), a 2048-long and an 8192-long map in two
# passes, their lines in chunks.
FULL_VARIANTS = [(128, 128, 1, True, "fp32", 1, True, 1, None, None, None),
                 (128, 128, 1, False, "fp32", 1, True, 1, None, None, None),
                 (128, 128, 2, True, "fp32", 2, True, 1, None, None, None),
                 (128, 128, 2, False, "fp32", 3, True, 1, None, None, None),
                 (64, 128, 1, False, "fp32", 1, True, 1, None, None, None),
                 (100, 160, 3, True, "fp32", 2, True, 1, None, None, None),
                 (128, 128, 1, False, "bf16", 1, True, 1, None, None, None),
                 (128, 256, 1, True, "fp32", 1, True, 1, None, None, None),
                 (128, 128, 1, True, "fp32", 1, True, 8, None, None, None),
                 (128, 128, 1, False, "bf16", 1, True, 16, None, None, None),
                 (64, 64, 2, True, "fp32", 2, True, 1, None, None, None),
                 (64, 64, 3, True, "bf16", 3, True, 1, None, None, None),
                 (64, 64, 1, False, "fp32", 3, True, 1, None, None, None),
                 (64, 64, 1, False, "fp64", 3, False, 1, None, None, None),
                 (64, 32, 2, False, "fp64", 2, True, 1, None, None, None),
                 (128, 128, 1, True, "fp64", 1, True, 1, None, None, None),
                 (3, 2048, 1, False, "fp32", 1, True, 1, None, None, None),
                 (3, 8192, 1, True, "bf16", 1, True, 1, None, None, None)]


@pytest.mark.slow
@pytest.mark.parametrize("arch", [90, 80, 100])
@pytest.mark.parametrize("variant", FULL_VARIANTS, ids=lambda v: f"{v[0]}x{v[1]}-d{v[2]}-{v[4]}-Q{v[5]}-cb{v[7]}")
def test_default_plans_compile_for_a_cuda_target(variant, arch):
    """Every kernel of the default plans compiles for sm_90 (H100), sm_80 (A100) and sm_100
    (B200) (~20-50 s per kernel on 2 cores) without spilling: no stack, no local memory. Walks
    off sm_90 take tiles of half the elements (``walk_weight``)."""
    rows = _compile_for_cuda([variant], arch)
    print(json.dumps(rows, indent=1))
    assert rows and all(resources.get("REG", 0) > 0 for _, resources in rows)
    spilled = [(name, resources) for name, resources in rows if resources.get("LOCAL", 0) or resources.get("STACK", 0)]
    assert not spilled


@pytest.mark.slow
def test_one_program_128_plane_spills_so_the_default_splits_it():
    """Why the default solves one program per map only up to 4096 float32 elements: the
    one-program backward of a 128² plane (16 warps) holds more than the registers it may
    have and spills to the stack (1096 B per thread when measured). If a compiler stops
    spilling it, the limit is worth raising."""
    rows = _compile_for_cuda([(128, 128, 1, True, "fp32", 1, True, 1, 16384, None, None)])
    (backward,) = [resources for name, resources in rows if name.endswith("backward")]
    assert backward["STACK"] > 512
