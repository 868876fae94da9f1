"""Model configuration: the official ``HGRNBitConfig`` keys as a dataclass."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmfree import MmfreeError

#: Forward-pass numerics of the float model: the official fake quantization, or hardware-exact.
Numerics = Literal["fake", "hardware"]
#: Training options (:class:`mmfree.pymodel.train.TrainConfig`, ``mmfree train``): autocast dtype, kernels,
#: multi-process strategy.
TrainDtype = Literal["float32", "bfloat16"]
Kernels = Literal["auto", "naive", "triton"]
Parallel = Literal["auto", "ddp", "fsdp"]

#: Presets of the released checkpoints (``ridger/MMfreeLM-*``), for perf projections and random models.
PRESETS: dict[str, dict[str, int]] = {
    "370M": {"hidden_size": 1024, "num_hidden_layers": 24, "vocab_size": 32000},
    "1.3B": {"hidden_size": 2048, "num_hidden_layers": 24, "vocab_size": 32000},
    "2.7B": {"hidden_size": 2560, "num_hidden_layers": 32, "vocab_size": 32000},
}


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: field -> (test, what it must be) for the JSON types of config.json (None allowed where it says so).
_TYPES = {
    "int": (_is_int, "an integer"),
    "int|None": (lambda v: v is None or _is_int(v), "an integer or null"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "number": (_is_num, "a number"),
}
_FIELD_TYPES = {
    "vocab_size": "int", "hidden_size": "int", "num_hidden_layers": "int", "attn_mode": "str", "num_heads": "int",
    "expand_ratio": "int", "use_short_conv": "bool", "conv_size": "int", "share_conv_kernel": "bool",
    "use_lower_bound": "bool", "hidden_ratio": "number", "intermediate_size": "int|None", "hidden_act": "str",
    "max_position_embeddings": "int", "rms_norm_eps": "number", "bitlinear_norm_eps": "number",
    "use_cache": "bool", "pad_token_id": "int|None", "bos_token_id": "int|None", "eos_token_id": "int|None",
    "tie_word_embeddings": "bool", "initializer_range": "number", "fuse_cross_entropy": "bool",
}


def _type_problems(cfg) -> list[str]:
    out = []
    for name, kind in _FIELD_TYPES.items():
        test, what = _TYPES[kind]
        v = getattr(cfg, name)
        if not test(v):
            out.append(f"{name} must be {what}, got {type(v).__name__} {v!r}")
    if not isinstance(cfg.extra, dict):
        out.append("extra must be a dict")
    return out


@dataclass
class MMFreeConfig:
    """Architecture of a MatMul-free LM (``model_type = "hgrn_bit"``), with the official defaults.

    ``intermediate_size=None`` means ``int(hidden_size * hidden_ratio * 2 / 3)`` rounded up to a
    multiple of 256, as the released code computes it. Only the options the released checkpoints use
    are supported: ``num_heads == 1``, ``expand_ratio == 1``, ``use_short_conv == False``,
    ``attn_mode == "fused_recurrent"``, ``hidden_act == "swish"``.
    """

    vocab_size: int = 32000
    hidden_size: int = 2048
    num_hidden_layers: int = 24
    attn_mode: str = "fused_recurrent"
    num_heads: int = 1
    expand_ratio: int = 1
    use_short_conv: bool = False
    conv_size: int = 4
    share_conv_kernel: bool = True
    use_lower_bound: bool = True
    hidden_ratio: int = 4
    intermediate_size: int | None = None
    hidden_act: str = "swish"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    #: eps of the RMSNorm inside every BitLinear. The released ``HGRNBitForCausalLM`` builds every projection
    #: as ``FusedBitLinear``, whose forward calls ``layer_norm_linear_quant_fn`` without ``eps``: the kernel's
    #: default 1e-6 applies (the module's declared ``RMSNorm(eps=1e-8)`` is unused). Official config.json files
    #: have no such key, so they load 1e-6; a checkpoint that states its own value (mmfree's default model was
    #: trained with 1e-8) keeps it.
    bitlinear_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int = 1
    eos_token_id: int = 2
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    fuse_cross_entropy: bool = True
    #: keys of config.json this class does not know, kept so a round trip loses nothing
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def intermediate(self) -> int:
        """The GLU width I (``gate_proj`` has 2I rows)."""
        if self.intermediate_size is not None:
            return int(self.intermediate_size)
        i = int(self.hidden_size * self.hidden_ratio * 2 / 3)
        return 256 * ((i + 255) // 256)

    def validate(self) -> None:
        """Types first (a JSON string "4" or "no" is refused, never coerced), then ranges, then support."""
        problems = _type_problems(self)
        if problems:
            raise MmfreeError("invalid model config: " + "; ".join(problems)
                              + " (fix config.json; the official values: docs/default-model.md)")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                problems.append(f"{name} must be a positive integer, got {v!r}")
        for name in ("rms_norm_eps", "bitlinear_norm_eps"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 < v < 1):
                problems.append(f"{name} must be a finite number in (0, 1), got {v!r}")
        if not (math.isfinite(self.hidden_ratio) and self.hidden_ratio > 0):
            problems.append(f"hidden_ratio must be a positive number, got {self.hidden_ratio!r}")
        if self.max_position_embeddings <= 0:
            problems.append(f"max_position_embeddings must be a positive integer, got {self.max_position_embeddings!r}")
        if self.intermediate_size is not None and (not isinstance(self.intermediate_size, int) or self.intermediate_size <= 0):
            problems.append(f"intermediate_size must be a positive integer or null, got {self.intermediate_size!r}")
        if problems:
            raise MmfreeError("invalid model config: " + "; ".join(problems))
        unsupported = []
        if self.num_heads != 1:
            unsupported.append(f"num_heads={self.num_heads} (only 1)")
        if self.expand_ratio != 1:
            unsupported.append(f"expand_ratio={self.expand_ratio} (only 1)")
        if self.use_short_conv:
            unsupported.append("use_short_conv=true (only false)")
        if self.attn_mode != "fused_recurrent":
            unsupported.append(f"attn_mode={self.attn_mode!r} (only 'fused_recurrent')")
        if self.hidden_act not in ("swish", "silu"):
            unsupported.append(f"hidden_act={self.hidden_act!r} (only 'swish')")
        if unsupported:
            raise MmfreeError("model options not supported yet: " + ", ".join(unsupported)
                              + "; the released MMfreeLM checkpoints use the defaults")

    # ---- Hugging Face config.json -------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MMFreeConfig:
        if not isinstance(d, dict):
            raise MmfreeError(f"a model config must be a JSON object, got {type(d).__name__}; "
                              "config.json is corrupt: restore it from the checkpoint's source")
        mt = d.get("model_type", "hgrn_bit")
        if mt != "hgrn_bit":
            raise MmfreeError(f"unknown model_type {mt!r}: mmfree reads MatMul-free LM checkpoints "
                              "(model_type 'hgrn_bit', e.g. ridger/MMfreeLM-370M)")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k != "model_type"}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        d = {"model_type": "hgrn_bit"}
        for f in dataclasses.fields(self):
            if f.name != "extra":
                d[f.name] = getattr(self, f.name)
        d.update({k: v for k, v in self.extra.items() if k not in d})
        d.setdefault("architectures", ["HGRNBitForCausalLM"])
        return d

    @classmethod
    def from_json(cls, path: str | Path) -> MMFreeConfig:
        if not Path(path).is_file():
            raise MmfreeError(f"{path} is not a file; a checkpoint holds config.json as a JSON file")
        try:
            d = json.loads(Path(path).read_text(), parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            raise MmfreeError(f"{path} is not valid JSON: {exc}; restore it from the checkpoint's source") from None
        return cls.from_dict(d)

    @classmethod
    def preset(cls, name: str, **overrides) -> MMFreeConfig:
        if name not in PRESETS:
            raise MmfreeError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
