"""The compiled CPU kernels for bitmask-compressed weights, built on first use (PyTorch C++ extension).

`load()` compiles `bitmask_matmul.cpp` with torch.utils.cpp_extension (ninja, the machine's C++
compiler, -O3) into PyTorch's extension cache, once per machine and instruction-set variant, and returns
None, with the reason in `load_error()`, when that is impossible (no compiler, no ninja): callers then
use the pure-PyTorch path. Variants: "native" (-march=native: AVX-512 with VBMI2 and BF16 where the CPU
has them, else AVX2), "avx2" (AVX-512 turned off), "portable" (no vector intrinsics); `PRUNELLM_KERNEL_ISA`
picks one, `PRUNELLM_NO_KERNEL=1` turns the kernels off. Imports nothing else of prunellm.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import sysconfig
from pathlib import Path

_SOURCE = Path(__file__).with_name("bitmask_matmul.cpp")
VARIANTS = {
    "native": ["-march=native"],
    "avx2": ["-march=native", "-mno-avx512f"],
    "portable": ["-march=native", "-mno-avx512f", "-mno-avx2", "-mno-fma", "-mno-f16c"],
}
_state: dict[str, dict] = {}


def _cpu_tag() -> str:
    """A short hash of the CPU's feature flags, so machines sharing an extension cache never share a build."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.machine() + platform.processor()
    return hashlib.sha256(flags.encode()).hexdigest()[:8]


def variant() -> str:
    """The variant `load()` builds by default: `PRUNELLM_KERNEL_ISA`, else native."""
    chosen = os.environ.get("PRUNELLM_KERNEL_ISA", "native")
    return chosen if chosen in VARIANTS else "native"


_DEFAULT = variant()  # read once: load() runs on every sparse layer call


def load(verbose: bool = False, isa: str | None = None):
    """The compiled extension module for `isa` (default `variant()`), or None when it cannot be built here."""
    isa = isa or _DEFAULT
    state = _state.get(isa)
    if state is not None:
        return state["module"]
    if os.environ.get("PRUNELLM_NO_KERNEL"):
        _state[isa] = {"module": None, "error": "disabled by PRUNELLM_NO_KERNEL"}
        return None
    # ninja from the `ninja` wheel lives next to this interpreter, which may not be on PATH
    scripts = sysconfig.get_path("scripts")
    os.environ["PATH"] = os.pathsep.join([scripts, os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    source_tag = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:8]
    try:
        from torch.utils.cpp_extension import load as build

        module = build(name=f"prunellm_bitmask_{isa}_{_cpu_tag()}_{source_tag}", sources=[str(_SOURCE)],
                       verbose=verbose, extra_cflags=["-O3", "-fopenmp", *VARIANTS[isa]],
                       extra_ldflags=["-fopenmp"])
        _state[isa] = {"module": module, "error": None}
    except Exception as exc:  # any build failure means: use the fallback
        _state[isa] = {"module": None, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1:]}"}
    return _state[isa]["module"]


def load_error(isa: str | None = None) -> str | None:
    return _state.get(isa or _DEFAULT, {}).get("error")
