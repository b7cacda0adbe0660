"""`AutoModelForCausalLM.from_pretrained(compressed_folder)` after `import prunellm`: a transformers quantizer plugin.

A compressed folder's config.json names `quant_method: prunellm-sparse` (see `compressed.mark_config`).
With this module imported, transformers builds the model on the meta device, this quantizer swaps every
linear whose weight is stored compressed for an empty `SparseLinear`, reads `model.sparse.safetensors`
(pointed to through the config's `transformers_weights`, set only while loading), and a deserialize op
turns each weight's stored parts into the layer's buffers, checking them as `prunellm.load` does. The
loaded model's `save_pretrained` writes a compressed folder again, with the same encoder.

Without the import transformers only warns about the unknown quant_method and then finds no
`model.safetensors`, so it fails instead of initialising random weights. Nothing named in a config file
is ever imported or executed.
"""

from __future__ import annotations

import re
import types
from pathlib import Path

import torch
from torch import nn
from transformers.core_model_loading import ConversionOps
from transformers.pytorch_utils import Conv1D
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..errors import UsageError
from .compressed import (FORMAT, QUANT_METHOD, VERSION, WEIGHTS, attach_quant, decode, mark_config, model_quant,
                         read_config, split_encoding, write_compressed)
from .sparse_linear import SparseLinear

_PARTS = ("compressed", "qvalues", "scales", "bitmask", "shape", "row_offsets")
_BUFFERS = ("values", "bitmask", "row_offsets", "scales")


class PrunellmSparseConfig(QuantizationConfigMixin):
    """config.json's quantization_config of a compressed folder: the format, its version, its structure."""

    def __init__(self, format: str = FORMAT, version: int = VERSION, sparsity_structure: str = "unstructured",
                 **kwargs):
        self.quant_method = QUANT_METHOD
        self.format, self.version, self.sparsity_structure = format, version, sparsity_structure
        if (format, version) != (FORMAT, VERSION):
            raise UsageError(f"unsupported sparse format {format!r} v{version} (this prunellm reads {FORMAT} v{VERSION})")


class PrunellmDeserialize(ConversionOps):
    """One compressed weight's stored parts → its SparseLinear's buffers, checked as `prunellm.load` does."""

    def __init__(self, hf_quantizer: "PrunellmSparseQuantizer"):
        self.hf_quantizer = hf_quantizer

    def convert(self, input_dict, model=None, full_layer_name: str | None = None, **kwargs) -> dict:
        parts = {key.removeprefix("weight."): value[0] if isinstance(value, list) else value
                 for key, value in input_dict.items()}
        if not full_layer_name.endswith(".values"):  # a compressed tensor that is no linear's weight
            parts = {key.rpartition(".")[2]: value for key, value in parts.items()}
            return {full_layer_name: decode(full_layer_name, self.hf_quantizer.encodings[full_layer_name], parts)}
        module_name = full_layer_name.removesuffix(".values")
        name = f"{module_name}.weight"
        dense = decode(name, self.hf_quantizer.encodings[name], parts)
        layer = model.get_submodule(module_name)
        if module_name in self.hf_quantizer.transposed:
            dense = dense.t()
        if layer.scheme is not None:
            buffers = SparseLinear.encode(dense.contiguous(), (layer.scheme, parts["scales"]))
        else:
            buffers = SparseLinear.encode(dense.to(layer.values.dtype).contiguous())
        return {f"{module_name}.{key}": value for key, value in buffers.items()}


class PrunellmSparseQuantizer(HfQuantizer):
    """Loads prunellm's compressed folders into SparseLinear layers (pre-compressed only)."""

    requires_calibration = True
    # a compressed weight's stored parts, collected into the SparseLinear that replaced its linear
    serialized_names = {"values": [f"weight.{part}" for part in _PARTS]}

    def __init__(self, quantization_config: PrunellmSparseConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self.encodings: dict[str, str] = {}  # stored tensor name -> encoding, for the compressed ones
        self.sparse_modules: set[str] = set()
        self.transposed: set[str] = set()  # GPT-2's Conv1D store W as in × out
        self.dense_tensors: list[str] = []  # compressed tensors that are not a linear's weight
        self.folder: Path | None = None

    def validate_environment(self, device_map=None, **kwargs) -> None:
        if isinstance(device_map, dict) and len(set(device_map.values())) > 1:
            raise UsageError("a compressed prunellm folder loads onto one device; drop device_map")

    def update_attn_implementation(self, config):
        # the one hook that sees the config before the weights file is looked up: point it at ours
        config.transformers_weights = WEIGHTS
        return config

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, dtype=None, **kwargs):
        folder = self.folder = Path(checkpoint_files[0]).parent
        sparse_config = read_config(folder)  # format, version and every file's checksum
        self.encodings = {name: enc for name, enc in sparse_config["tensors"].items() if enc != "dense"}
        for name in self.encodings:
            module_name = name.removesuffix(".weight")
            module = model.get_submodule(module_name) if name.endswith(".weight") else None
            if not isinstance(module, (nn.Linear, Conv1D)):
                self.dense_tensors.append(name)  # e.g. Mamba's A_log: decoded into its own parameter
                continue
            transposed = isinstance(module, Conv1D)
            out_features, in_features = module.weight.shape[::-1] if transposed else module.weight.shape
            layer = SparseLinear.skeleton(out_features, in_features, dtype or module.weight.dtype,
                                          module.bias is not None, split_encoding(self.encodings[name])[1])
            parent_name, _, child = module_name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
            self.sparse_modules.add(module_name)
            if transposed:
                self.transposed.add(module_name)
        return model

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        module_name, _, buffer = param_name.rpartition(".")
        return module_name in self.sparse_modules and buffer in _BUFFERS

    def get_weight_conversions(self):
        """The linears' parts into their SparseLinear (`serialized_names`), and one exact converter for each
        other compressed tensor, first so that no generic pattern takes its parts."""
        from transformers.core_model_loading import WeightConverter

        exact = [WeightConverter([f"{re.escape(name)}.{part}" for part in _PARTS], name, [PrunellmDeserialize(self)])
                 for name in self.dense_tensors]
        return exact + super().get_weight_conversions()

    def _quantized_dense_tensors(self) -> dict:
        """Scheme and scales of the quantized tensors that are no linear's weight (a quantized embedding,
        tied to the head), read from the file: transformers copies the conversion ops, so they keep none."""
        from safetensors import safe_open

        quantized = {name: split_encoding(self.encodings[name])[1] for name in self.dense_tensors}
        quantized = {name: scheme for name, scheme in quantized.items() if scheme is not None}
        if not quantized:
            return {}
        with safe_open(self.folder / WEIGHTS, "pt") as f:
            return {name: (scheme, f.get_tensor(f"{name}.scales")) for name, scheme in quantized.items()}

    def get_load_operations(self) -> dict:
        return {"deserialize": PrunellmDeserialize}

    def _process_model_after_weight_loading(self, model, **kwargs):
        model.config.__dict__.pop("transformers_weights", None)
        attach_quant(model, self._quantized_dense_tensors())
        model.save_pretrained = types.MethodType(save_compressed, model)
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def dense_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every SparseLinear as its dense `weight` (transposed back for Conv1D)."""
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    quantizer = getattr(model, "hf_quantizer", None)
    transposed = quantizer.transposed if isinstance(quantizer, PrunellmSparseQuantizer) else set()
    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear):
            for key in _BUFFERS:
                state.pop(f"{name}.{key}", None)
            weight = module.dense_weight()
            state[f"{name}.weight"] = weight.t().contiguous() if name in transposed else weight
    return remove_tied_weights_from_state_dict(state, model)


def save_compressed(model, save_directory: str | Path, is_main_process: bool = True, **kwargs) -> None:
    """`save_pretrained` of a model loaded from a compressed folder: the compressed folder again."""
    if not is_main_process:
        return
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(folder)
    structure = model.config.quantization_config.sparsity_structure
    nm = tuple(int(v) for v in structure.split(":")) if ":" in structure else None
    for stale in list(folder.glob("*.safetensors")) + list(folder.glob("*.safetensors.index.json")):
        stale.unlink()
    state = {k: v.detach().cpu() for k, v in dense_state(model).items()}
    quant = model_quant(model, set(state))
    quant.update({f"{name}.weight": (module.scheme, module.scales.float().cpu()) for name, module in model.named_modules()
                  if isinstance(module, SparseLinear) and module.scheme is not None})
    config = write_compressed(state, folder, nm, quant)
    mark_config(folder, config["sparsity_structure"])


def register() -> None:
    """Teach transformers the prunellm-sparse quant_method (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(PrunellmSparseConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(PrunellmSparseQuantizer)


register()
