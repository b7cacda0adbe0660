"""Compressed sparse checkpoints: each sparse weight stored as its kept values plus a packed bitmask.

The tensor layout is compressed-tensors' former `sparse-bitmask` format (removed upstream in March
2026): `W.compressed` (kept values, row-major), `W.bitmask` (uint8, R × ceil(C/8), little bit
order), `W.shape`, `W.row_offsets`. N:M weights use its `sparse-24-bitmask` idea for any N:M:
`W.compressed` is the dense R × C·(M−N)/M matrix of kept values, so a kernel can index it directly.
Each tensor gets its own N for the model's M (OWL's mixed N:M gives 1:4 and 3:4 blocks in a 2:4 model).

A weight is "kept" where its bits are not all zero (so −0.0 survives and the round trip is
bit-exact). The weights go to `model.sparse.safetensors` (not `model.safetensors`, so a plain
`from_pretrained` fails loudly instead of initialising random weights) and `sparse_config.json`
records the format, every tensor's encoding and the file's SHA-256, checked on load.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import UsageError
from ..outputs import REPORT, atomic_folder

CONFIG = "sparse_config.json"
WEIGHTS = "model.sparse.safetensors"
FORMAT = "prunellm-sparse-bitmask"
VERSION = 1
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def nonzero_bits(w: torch.Tensor) -> torch.Tensor:
    """True where the value's bit pattern is not all zero (+0.0 is pruned, −0.0 is a value)."""
    return w.contiguous().view(_INT_VIEW[w.element_size()]) != 0


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """R × C bool → R × ceil(C/8) uint8, little bit order (numpy.packbits(..., bitorder="little"))."""
    rows, cols = mask.shape
    padded = torch.zeros(rows, (cols + 7) // 8 * 8, dtype=torch.uint8, device=mask.device)
    padded[:, :cols] = mask
    weights = 1 << torch.arange(8, dtype=torch.uint8, device=mask.device)
    return (padded.view(rows, -1, 8) * weights).sum(-1, dtype=torch.uint8)


def unpack_bits(bitmask: torch.Tensor, cols: int) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.uint8, device=bitmask.device)
    return ((bitmask.unsqueeze(-1) >> shifts) & 1).bool().reshape(bitmask.shape[0], -1)[:, :cols]


def nm_keep(w: torch.Tensor, m: int) -> tuple[int, torch.Tensor] | None:
    """(N, keep) with N the largest that fits every group of M along a row (the fullest group decides)
    and exactly M−N kept positions per group (non-zeros first, then by position); None when the width
    does not divide or some group is full."""
    rows, cols = w.shape
    if cols % m:
        return None
    nz = nonzero_bits(w).view(rows, cols // m, m)
    n = m - int(nz.sum(-1).max())
    if not n:
        return None
    order = torch.argsort((~nz).to(torch.int8), dim=-1, stable=True)[..., : m - n]
    keep = torch.zeros_like(nz).scatter_(-1, order, True)
    return n, keep.view(rows, cols)


def encode(w: torch.Tensor, nm: tuple[int, int] | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """One weight → (encoding name, tensors to store under `name.<key>`). With a model-wide N:M, the
    tensor is stored as N':M with its own N' (its fullest group decides), so mixed-N blocks stay dense-indexable."""
    layout = nm_keep(w, nm[1]) if nm and w.dim() == 2 else None
    if layout is not None:
        n, keep = layout
        values = w[keep].view(w.shape[0], -1)
        return f"sparse-{n}:{nm[1]}-bitmask", {"compressed": values, "bitmask": pack_bits(keep),
                                               "shape": torch.tensor(w.shape, device="cpu")}
    keep = nonzero_bits(w)
    counts = keep.sum(1)
    return "sparse-bitmask", {"compressed": w[keep], "bitmask": pack_bits(keep), "shape": torch.tensor(w.shape, device="cpu"),
                              "row_offsets": counts.cumsum(0) - counts}


def decode(name: str, encoding: str, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of `encode`, checking that every part is consistent (never silently zero weights)."""
    try:
        shape = tuple(int(v) for v in parts["shape"])
        values, bitmask = parts["compressed"], parts["bitmask"]
    except KeyError as exc:
        raise UsageError(f"compressed weight {name}: missing {exc.args[0]!r}") from None
    rows, cols = shape
    if tuple(bitmask.shape) != (rows, (cols + 7) // 8) or bitmask.dtype != torch.uint8:
        raise UsageError(f"compressed weight {name}: bitmask {tuple(bitmask.shape)} does not fit shape {shape}")
    keep = unpack_bits(bitmask, cols)
    if int(keep.sum()) != values.numel() or bool((pack_bits(keep) != bitmask).any()):
        raise UsageError(f"compressed weight {name}: bitmask has {int(keep.sum())} bits set for "
                         f"{values.numel()} values (or stray padding bits)")
    if encoding == "sparse-bitmask":
        counts = keep.sum(1)
        if "row_offsets" not in parts or not torch.equal(parts["row_offsets"], counts.cumsum(0) - counts):
            raise UsageError(f"compressed weight {name}: row offsets do not match the bitmask")
    elif not (encoding.startswith("sparse-") and values.dim() == 2 and values.shape[0] == rows):
        raise UsageError(f"compressed weight {name}: unknown encoding {encoding!r} or bad value layout")
    w = torch.zeros(shape, dtype=values.dtype, device=values.device)
    w[keep] = values.flatten()
    return w


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def compress_state(state: dict[str, torch.Tensor], nm: tuple[int, int] | None = None,
                   names: set[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Encode 2-D floating tensors that the bitmask layout makes smaller (or those in `names`)."""
    out, encodings = {}, {}
    for name, w in state.items():
        sparse_enough = False
        if w.dim() == 2 and w.is_floating_point():
            zeros = 1 - float(nonzero_bits(w).double().mean())
            sparse_enough = zeros > 1 / (8 * w.element_size()) + 0.01
        if sparse_enough if names is None else name in names:
            encodings[name], parts = encode(w, nm)
            out.update({f"{name}.{k}": v.contiguous() for k, v in parts.items()})
        else:
            encodings[name] = "dense"
            out[name] = w.contiguous()
    return out, encodings


def _read_dense_folder(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UsageError(f"{folder} has no .safetensors weights to compress")
    state = {}
    for f in files:
        state.update(load_file(f))
    return state


def _structure(folder: Path) -> tuple[int, int] | None:
    report = folder / REPORT
    if not report.exists():
        return None
    text = json.loads(report.read_text()).get("config", {}).get("mask_structure", "0:0")
    n, m = (int(x) for x in text.split(":"))
    return (n, m) if m else None


def write_compressed(state: dict[str, torch.Tensor], folder: Path, nm: tuple[int, int] | None = None) -> dict:
    """Write `state` into `folder` as model.sparse.safetensors + sparse_config.json; returns the config."""
    tensors, encodings = compress_state(state, nm)
    save_file(tensors, folder / WEIGHTS, metadata={"format": FORMAT})
    config = {
        "format": FORMAT, "version": VERSION, "bit_order": "little",
        "sparsity_structure": f"{nm[0]}:{nm[1]}" if nm else "unstructured",
        "dense_bytes": sum(v.numel() * v.element_size() for v in state.values()),
        "files": {WEIGHTS: _sha256(folder / WEIGHTS)}, "tensors": encodings,
    }
    (folder / CONFIG).write_text(json.dumps(config, indent=2))
    return config


QUANT_METHOD = "prunellm-sparse"  # config.json's quantization_config.quant_method (the transformers plugin)


def mark_config(folder: Path, structure: str) -> None:
    """Name the format in config.json's quantization_config, which `import prunellm` teaches transformers
    to load. The weights file keeps its own name, so without the plugin from_pretrained finds no weights."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.pop("transformers_weights", None)
    config["quantization_config"] = {"quant_method": QUANT_METHOD, "format": FORMAT, "version": VERSION,
                                     "sparsity_structure": structure}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def compress_in_place(folder: Path) -> dict:
    """Replace a dense folder's safetensors weights by the compressed layout (used while staging)."""
    state = _read_dense_folder(folder)
    for f in list(folder.glob("*.safetensors")) + list(folder.glob("model.safetensors.index.json")):
        f.unlink()
    config = write_compressed(state, folder, _structure(folder))
    mark_config(folder, config["sparsity_structure"])
    return config


def compress_folder(src: str | Path, dst: str | Path, dtype: torch.dtype | None = None,
                    overwrite: bool = False) -> dict:
    """Write a compressed copy of a dense model folder (atomically); returns the sparse config."""
    src = Path(src)
    if not (src / "config.json").is_file():
        raise UsageError(f"{src} is not a model folder (no config.json)")
    if is_compressed(src):
        raise UsageError(f"{src} is already compressed")
    state = _read_dense_folder(src)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with atomic_folder(dst, overwrite) as staging:
        for f in src.iterdir():
            if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
                shutil.copy2(f, staging / f.name)
        if dtype is not None:
            _set_config_dtype(staging / "config.json", dtype)
        config = write_compressed(state, staging, _structure(src))
        mark_config(staging, config["sparsity_structure"])
        return config


def _set_config_dtype(path: Path, dtype: torch.dtype) -> None:
    config = json.loads(path.read_text())
    config["dtype"] = str(dtype).removeprefix("torch.")
    path.write_text(json.dumps(config, indent=2))


def is_compressed(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG).is_file()


def read_config(folder: str | Path) -> dict:
    """A compressed folder's sparse_config.json, after checking its format and every file's SHA-256."""
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{folder / CONFIG}: unreadable ({exc})") from None
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise UsageError(f"{folder}: unsupported sparse format {config.get('format')!r} v{config.get('version')}")
    for fname, digest in config["files"].items():
        path = folder / fname
        if not path.is_file():
            raise UsageError(f"{path}: missing")
        if _sha256(path) != digest:
            raise UsageError(f"{path}: checksum mismatch (corrupt or truncated file)")
    return config


def load_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """Decompress a folder's weights to a plain state dict, verifying checksums and layouts."""
    folder = Path(folder)
    config = read_config(folder)
    stored = {}
    for fname in config["files"]:
        path = folder / fname
        try:
            stored.update(load_file(path))
        except SafetensorError as exc:
            raise UsageError(f"{path}: unreadable ({exc})") from None
    state = {}
    for name, encoding in config["tensors"].items():
        if encoding == "dense":
            if name not in stored:
                raise UsageError(f"{folder}: tensor {name} missing")
            state[name] = stored[name]
        else:
            prefix = f"{name}."
            parts = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}
            state[name] = decode(name, encoding, parts)
    return state


def load_compressed(folder: str | Path, dtype: str | None = None):
    """(model, tokenizer) from a compressed folder: the exact weights that were saved."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    state = load_state(folder)
    config = AutoConfig.from_pretrained(folder)
    config.__dict__.pop("quantization_config", None)  # the model built here is a plain dense one
    torch_dtype = getattr(torch, dtype) if dtype else next(v for v in state.values() if v.is_floating_point()).dtype
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {}) | set(getattr(model, "_tied_weights_keys", []) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise UsageError(f"{folder}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(folder) if (folder / "tokenizer_config.json").exists() else None
    return model.eval(), tokenizer
