"""The compiled CPU kernel for bitmask-compressed weights, built on first use (PyTorch C++ extension).

`load()` compiles `bitmask_matmul.cpp` with torch.utils.cpp_extension (ninja, the machine's C++
compiler, -O3 -march=native) into PyTorch's extension cache, and returns None, with the reason in
`load_error()`, when that is impossible (no compiler, no ninja): callers then use the pure-PyTorch path.
Imports nothing else of prunellm.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

_SOURCE = Path(__file__).with_name("bitmask_matmul.cpp")
_state: dict = {}


def load(verbose: bool = False):
    """The compiled extension module, or None when it cannot be built here (see `load_error`)."""
    if "module" not in _state:
        if os.environ.get("PRUNELLM_NO_KERNEL"):
            _state.update(module=None, error="disabled by PRUNELLM_NO_KERNEL")
            return None
        # ninja from the `ninja` wheel lives next to this interpreter, which may not be on PATH
        scripts = sysconfig.get_path("scripts")
        os.environ["PATH"] = os.pathsep.join([scripts, os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        try:
            from torch.utils.cpp_extension import load as build

            module = build(name="prunellm_bitmask", sources=[str(_SOURCE)], verbose=verbose,
                           extra_cflags=["-O3", "-march=native"])
            _state.update(module=module, error=None)
        except Exception as exc:  # any build failure means: use the fallback
            _state.update(module=None, error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1:]}")
    return _state["module"]


def load_error() -> str | None:
    return _state.get("error")
