"""Compile one Triton kernel ahead of time for sm_90 (an H100) and read its register use, without a GPU.

Shared by the `--compile-report` modes of bench_attention.py and bench_kmer_embedding.py: Triton's
ahead-of-time API (`triton.compile` on an `ASTSource`) and the `cuobjdump` that Triton ships.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any


def compile_sm90(
    kernel: Any, sig: dict[str, str], consts: dict[str, Any], attrs: dict, **options: Any
) -> tuple[Any, str, str]:
    """-> (the compiled kernel, registers per thread, spill bytes (cuobjdump's STACK)).

    ``sig``: argument name -> Triton type ('*fp32', 'i32', 'constexpr'); ``attrs``: e.g.
    ``{(i,): [["tt.divisibility", 16]]}``; ``options``: num_warps, num_stages."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    compiled = triton.compile(
        ASTSource(kernel, sig, constexprs=consts, attrs=attrs),
        target=GPUTarget("cuda", 90, 32),
        options=options,
    )
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    return compiled, usage.split("REG:")[1].split()[0], usage.split("STACK:")[1].split()[0]
