"""Compressed sparse checkpoints: each sparse weight stored as its kept values plus a packed bitmask.

The tensor layout is compressed-tensors' former `sparse-bitmask` format (removed upstream in March
2026): `W.compressed` (kept values, row-major), `W.bitmask` (uint8, R × ceil(C/8), little bit
order), `W.shape`, `W.row_offsets`. N:M weights use its `sparse-24-bitmask` idea for any N:M:
`W.compressed` is the dense R × C·(M−N)/M matrix of kept values, so a kernel can index it directly.
Each tensor gets its own N for the model's M (OWL's mixed N:M gives 1:4 and 3:4 blocks in a 2:4 model).

Quantized weights (int8, or int4 packed two per byte, low nibble first) store their codes as
`W.qvalues` in place of `W.compressed`, with `W.scales` (float32, rows × groups): the encoding gains a
suffix `+int8g0` / `+int4g128` (bits, group size; 0 = per output channel), and a dense-stored tensor is
`dense+int8g0` (`W.qvalues`, `W.scales`, `W.shape`).

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
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import UsageError
from ..outputs import REPORT, atomic_folder
from ..quant import QuantScheme, dequantize, entry_scales

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


Quant = tuple[QuantScheme, torch.Tensor]  # a quantized weight's scheme and scales (rows × groups)


def quant_suffix(scheme: QuantScheme) -> str:
    return f"+{scheme.name}g{scheme.group_size}"


def split_encoding(encoding: str) -> tuple[str, QuantScheme | None]:
    """"sparse-bitmask+int4g128" → ("sparse-bitmask", QuantScheme(4, 128))."""
    base, _, quant = encoding.partition("+")
    if not quant:
        return base, None
    bits, _, group = quant.removeprefix("int").partition("g")
    if bits not in ("8", "4") or not group.isdigit():
        raise UsageError(f"unknown quantization {quant!r} in encoding {encoding!r}")
    return base, QuantScheme(int(bits), int(group))


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes in [-8, 7] (flat) → uint8, two per byte, the first in the low nibble."""
    nibbles = (codes.flatten().to(torch.int16) & 15).to(torch.uint8)
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
    return nibbles[0::2] | (nibbles[1::2] << 4)


def unpack_int4(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of `pack_int4`: the first `count` codes as int8."""
    nibbles = torch.stack([packed & 15, packed >> 4], dim=-1).flatten()[:count].to(torch.int8)
    return torch.where(nibbles > 7, nibbles - 16, nibbles)


def quantized_codes(name: str, w: torch.Tensor, quant: Quant) -> torch.Tensor:
    """The int8 codes of a weight that lies on its grid (code · scale == w exactly), else an error."""
    scheme, scales = quant
    per_entry = entry_scales(scales.float(), scheme, w.shape[1])
    codes = torch.round(w.float() / per_entry)
    exact = dequantize(codes, scales.float(), scheme)  # a 16-bit weight holds code · scale rounded: eps apart
    if codes.abs().max() > scheme.qmax or not torch.allclose(w.float(), exact, rtol=torch.finfo(w.dtype).eps, atol=0):
        raise UsageError(f"{name}: the weight is not on its {scheme.name} grid (changed after quantization?)")
    return codes.to(torch.int8)


def _store_codes(codes: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    return pack_int4(codes) if scheme.bits == 4 else codes


def encode(w: torch.Tensor, nm: tuple[int, int] | None = None, quant: Quant | None = None,
           name: str = "weight") -> tuple[str, dict[str, torch.Tensor]]:
    """One weight → (encoding name, tensors to store under `name.<key>`). With a model-wide N:M, the
    tensor is stored as N':M with its own N' (its fullest group decides), so mixed-N blocks stay dense-indexable.
    With `quant` the kept values are stored as codes (`qvalues`) beside their scales."""
    if quant is not None:
        codes = quantized_codes(name, w, quant)
        w = dequantize(codes, quant[1].float(), quant[0]).to(w.dtype)  # −0 → +0: a zero code stores no sign
        zeros = float((codes == 0).double().mean())
        pays = zeros > 1 / quant[0].bits + 0.01  # the bitmask costs 1 bit per weight, a code `bits`
        base, parts = encode(w, nm) if pays else ("dense", {})
        if base == "dense":
            parts = {"qvalues": _store_codes(codes, quant[0]), "shape": torch.tensor(w.shape, device="cpu")}
        else:
            keep = unpack_bits(parts["bitmask"], w.shape[1])
            kept = codes[keep].view(parts.pop("compressed").shape)
            parts["qvalues"] = _store_codes(kept, quant[0])
        parts["scales"] = quant[1].float().contiguous()
        return base + quant_suffix(quant[0]), parts
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


def _dequantized_values(name: str, scheme: QuantScheme, parts: dict[str, torch.Tensor], shape: tuple[int, int],
                        keep: torch.Tensor | None) -> torch.Tensor:
    """The float32 values of a quantized weight's stored codes (all entries, or those under `keep`)."""
    rows, cols = shape
    scales, stored = parts.get("scales"), parts.get("qvalues")
    if scales is None or stored is None:
        raise UsageError(f"compressed weight {name}: missing qvalues or scales")
    if tuple(scales.shape) != (rows, scheme.groups(cols)) or scales.dtype != torch.float32:
        raise UsageError(f"compressed weight {name}: scales {tuple(scales.shape)} do not fit shape {shape}")
    count = rows * cols if keep is None else int(keep.sum())
    expected = (torch.uint8, (count + 1) // 2) if scheme.bits == 4 else (torch.int8, count)
    if (stored.dtype, stored.numel()) != expected:
        raise UsageError(f"compressed weight {name}: {stored.numel()} {stored.dtype} codes for {count} values")
    codes = unpack_int4(stored, count) if scheme.bits == 4 else stored.flatten()
    if codes.numel() and int(codes.abs().max()) > scheme.qmax:
        raise UsageError(f"compressed weight {name}: codes outside the {scheme.name} range")
    per_entry = entry_scales(scales, scheme, cols)
    if keep is None:
        return codes.view(rows, cols).float() * per_entry + 0.0
    return codes.float() * per_entry[keep] + 0.0


def _shape_and_mask(name: str, parts: dict[str, torch.Tensor]) -> tuple[tuple[int, int], torch.Tensor]:
    """A stored weight's shape and bitmask, checked against each other."""
    try:
        shape = tuple(int(v) for v in parts["shape"])
        bitmask = parts["bitmask"]
    except KeyError as exc:
        raise UsageError(f"compressed weight {name}: missing {exc.args[0]!r}") from None
    if tuple(bitmask.shape) != (shape[0], (shape[1] + 7) // 8) or bitmask.dtype != torch.uint8:
        raise UsageError(f"compressed weight {name}: bitmask {tuple(bitmask.shape)} does not fit shape {shape}")
    return shape, bitmask


def decode(name: str, encoding: str, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of `encode`, checking that every part is consistent (never silently zero weights).
    Quantized weights come back dequantized, in float32."""
    encoding, scheme = split_encoding(encoding)
    if scheme is not None and encoding == "dense":
        if "shape" not in parts:
            raise UsageError(f"compressed weight {name}: missing 'shape'")
        return _dequantized_values(name, scheme, parts, tuple(int(v) for v in parts["shape"]), None)
    if scheme is not None:  # the codes become the values, then the checks below apply as for floats
        shape, bitmask = _shape_and_mask(name, parts)
        values = _dequantized_values(name, scheme, parts, shape, unpack_bits(bitmask, shape[1]))
        parts = {**parts, "compressed": values if encoding == "sparse-bitmask" else values.view(shape[0], -1)}
    shape, bitmask = _shape_and_mask(name, parts)
    if "compressed" not in parts:
        raise UsageError(f"compressed weight {name}: missing 'compressed'")
    values, (rows, cols) = parts["compressed"], shape
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
                   names: set[str] | None = None, quant: dict[str, Quant] | None = None
                   ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Encode 2-D floating tensors that the bitmask layout makes smaller (or those in `names`), and every
    quantized one (`quant`: name → scheme and scales) as codes."""
    out, encodings = {}, {}
    quant = quant or {}
    for name, w in state.items():
        sparse_enough = False
        if w.dim() == 2 and w.is_floating_point():
            zeros = 1 - float(nonzero_bits(w).double().mean())
            sparse_enough = zeros > 1 / (8 * w.element_size()) + 0.01
        if name in quant or (sparse_enough if names is None else name in names):
            encodings[name], parts = encode(w, nm, quant.get(name), name)
            out.update({f"{name}.{k}": v.contiguous() for k, v in parts.items()})
        else:
            encodings[name] = "dense"
            out[name] = w.contiguous()
    return out, encodings


def _read_dense_folder(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(f for f in folder.glob("*.safetensors") if f.name != SCALES)
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


def write_compressed(state: dict[str, torch.Tensor], folder: Path, nm: tuple[int, int] | None = None,
                     quant: dict[str, Quant] | None = None) -> dict:
    """Write `state` into `folder` as model.sparse.safetensors + sparse_config.json; returns the config."""
    tensors, encodings = compress_state(state, nm, quant=quant)
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


SCALES = "quant_scales.safetensors"  # a dense folder's quantization scales, beside its dequantized weights


def write_scales(folder: Path, quant: dict[str, Quant]) -> None:
    """Store the scales of a dense folder's quantized weights (`name.scales`, scheme in the metadata)."""
    if quant:
        save_file({f"{name}.scales": q[1].float().contiguous() for name, q in quant.items()}, folder / SCALES,
                  metadata={name: quant_suffix(q[0]) for name, q in quant.items()})


def read_scales(folder: str | Path) -> dict[str, Quant]:
    """The quantized weights of a dense folder (empty when it has none)."""
    path = Path(folder) / SCALES
    if not path.is_file():
        return {}
    with safe_open(path, "pt") as f:
        schemes = {name: split_encoding(suffix)[1] for name, suffix in (f.metadata() or {}).items()
                   if name != "format"}
        return {name: (scheme, f.get_tensor(f"{name}.scales")) for name, scheme in schemes.items()}


def compress_in_place(folder: Path) -> dict:
    """Replace a dense folder's safetensors weights by the compressed layout (used while staging)."""
    quant = read_scales(folder)
    state = _read_dense_folder(folder)
    for f in list(folder.glob("*.safetensors")) + list(folder.glob("model.safetensors.index.json")):
        f.unlink()
    config = write_compressed(state, folder, _structure(folder), quant)
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
    quant = read_scales(src)
    state = _read_dense_folder(src)
    if dtype is not None:  # quantized weights are stored as codes: their dtype does not matter
        state = {k: v.to(dtype) if v.is_floating_point() and k not in quant else v for k, v in state.items()}
    with atomic_folder(dst, overwrite) as staging:
        for f in src.iterdir():
            if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
                shutil.copy2(f, staging / f.name)
        if dtype is not None:
            _set_config_dtype(staging / "config.json", dtype)
        config = write_compressed(state, staging, _structure(src), quant)
        mark_config(staging, config["sparsity_structure"])
        return config


def decompress_folder(src: str | Path, dst: str | Path, overwrite: bool = False) -> Path:
    """Write a compressed folder back as a plain dense one (quantized weights dequantized, their scales
    kept beside them in quant_scales.safetensors), loadable by any tool that reads safetensors."""
    src = Path(src)
    if not is_compressed(src):
        raise UsageError(f"{src} is not a compressed folder (no {CONFIG})")
    state, quant = load_state_and_quant(src)
    with atomic_folder(dst, overwrite) as staging:
        for f in src.iterdir():
            if f.is_file() and f.name not in (CONFIG, WEIGHTS, "config.json"):
                shutil.copy2(f, staging / f.name)
        config = json.loads((src / "config.json").read_text())
        config.pop("quantization_config", None)
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file({k: v.contiguous() for k, v in state.items()}, staging / "model.safetensors", metadata={"format": "pt"})
        write_scales(staging, quant)
    return Path(dst)


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
    return load_state_and_quant(folder)[0]


def load_state_and_quant(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Quant]]:
    """`load_state`, and the scheme and scales of each quantized weight (dequantized in the state)."""
    folder = Path(folder)
    config = read_config(folder)
    stored, quant = {}, {}
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
            scheme = split_encoding(encoding)[1]
            if scheme is not None:
                quant[name] = (scheme, parts["scales"])
    return state, quant


def model_quant(model: torch.nn.Module, names: set[str] | None = None) -> dict[str, Quant]:
    """The quantized weights of a model (modules carrying `prunellm_quant` / `prunellm_scales`, set by the
    prune loop or `attach_quant`), by parameter name; a tied weight under the name in `names` (the saved
    keys), when given."""
    param_names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if names is None or name in names:
            param_names.setdefault(id(param), []).append(name)
    quant = {}
    for module in model.modules():
        scheme = getattr(module, "prunellm_quant", None)
        if scheme is not None and param_names.get(id(module.weight)):
            quant[param_names[id(module.weight)][0]] = (scheme, module.prunellm_scales)
    return quant


def attach_quant(model: torch.nn.Module, quant: dict[str, Quant]) -> None:
    """Mark the modules whose weight `quant` names (and any module sharing that weight) as quantized."""
    if not quant:
        return
    params = dict(model.named_parameters(remove_duplicate=False))
    weights = {id(params[name]): q for name, q in quant.items() if name in params}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and id(weight) in weights:
            module.prunellm_quant, module.prunellm_scales = weights[id(weight)]


def load_compressed(folder: str | Path, dtype: str | None = None):
    """(model, tokenizer) from a compressed folder: the exact weights that were saved."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    state, quant = load_state_and_quant(folder)
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
    attach_quant(model, quant)
    tokenizer = AutoTokenizer.from_pretrained(folder) if (folder / "tokenizer_config.json").exists() else None
    return model.eval(), tokenizer
