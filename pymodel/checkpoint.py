"""Load and save checkpoints in the Hugging Face layout the released MMfreeLM models use.

A checkpoint is a directory with ``config.json`` (``model_type: "hgrn_bit"``) and either
``model.safetensors`` or shards listed by ``model.safetensors.index.json``; ``tokenizer.json`` may sit
beside them. fp32, bf16 and fp16 tensors load. Pickle files (``*.bin``) are refused: they can run code.
No network access: a path that does not exist is an error, never a download.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mmfree import MmfreeError
from mmfree.atomic import atomic_path
from mmfree.pymodel.config import MMFreeConfig

#: Name that means "the model embedded in this package".
DEFAULT = "default"


def default_model_dir() -> Path:
    return Path(__file__).resolve().parent / "default_model"


def resolve(path: str | os.PathLike) -> Path:
    """``"default"`` -> the embedded model's directory; anything else must be an existing directory."""
    if str(path) == DEFAULT:
        d = default_model_dir()
        if not (d / "config.json").exists():
            raise MmfreeError(f"the embedded default model is missing from {d}; reinstall mmfree or retrain it "
                              "(docs/default-model.md has the command)")
        return d
    p = Path(path).expanduser()
    if not p.exists():
        raise MmfreeError(f"model path {p} does not exist (mmfree never downloads; fetch the checkpoint first, "
                          "e.g. `huggingface-cli download ridger/MMfreeLM-370M --local-dir DIR`)")
    if p.is_file():
        raise MmfreeError(f"{p} is a file; pass the checkpoint directory that holds config.json")
    return p


def safetensor_files(d: Path) -> list[Path]:
    index = d / "model.safetensors.index.json"
    if index.exists():
        files = _index_files(index, d)
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise MmfreeError(f"{index} lists shards that are missing: {', '.join(missing)}")
        return files
    single = d / "model.safetensors"
    if single.is_file():
        return [single]
    pickles = sorted(p.name for p in d.glob("*.bin"))
    if pickles:
        raise MmfreeError(f"{d} holds only pickle weights ({', '.join(pickles)}); mmfree loads safetensors only, "
                          "because pickle files can execute code. Convert once in a trusted environment, e.g. "
                          "`python -c \"import torch, safetensors.torch as s; "
                          "s.save_file(torch.load('pytorch_model.bin', weights_only=True), 'model.safetensors')\"`")
    raise MmfreeError(f"no model.safetensors (or model.safetensors.index.json) in {d}")


def _index_files(index: Path, d: Path) -> list[Path]:
    """The shard files a ``model.safetensors.index.json`` names: a ``weight_map`` object of tensor name ->
    file name, each a plain relative name inside ``d`` (absolute paths and ``..`` are refused)."""
    fix = "restore the index from the checkpoint's source"
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (ValueError, UnicodeDecodeError, OSError, AttributeError) as exc:
        raise MmfreeError(f"{index} is not a valid safetensors index ({exc}); {fix}") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise MmfreeError(f"{index}: 'weight_map' must be a non-empty object of tensor name -> shard file; {fix}")
    files = set()
    for name, f in weight_map.items():
        if not isinstance(f, str) or not f or Path(f).is_absolute() or ".." in Path(f).parts:
            raise MmfreeError(f"{index}: weight_map[{name!r}] = {f!r} must be a file name inside {d} "
                              f"(no absolute path, no '..'); {fix}")
        p = (d / f).resolve()
        if d.resolve() not in p.parents:
            raise MmfreeError(f"{index}: weight_map[{name!r}] = {f!r} points outside {d}; {fix}")
        files.add(d / f)
    return sorted(files)


def read_state_dict(d: Path) -> dict:
    sd = {}
    for f in safetensor_files(d):
        h = open_safetensors(f)
        try:
            for k in h.keys():
                sd[k] = h.get_tensor(k)
        except Exception as exc:
            raise MmfreeError(f"{f}: reading the tensors failed ({exc}); the file may be damaged: download it again") from exc
    return sd


def expected_shapes(cfg: MMFreeConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the official state dict with its shape."""
    d, I, V, L = cfg.hidden_size, cfg.intermediate, cfg.vocab_size, cfg.num_hidden_layers
    shapes: dict[str, tuple[int, ...]] = {"model.embeddings.weight": (V, d), "model.norm.weight": (d,)}
    if cfg.use_lower_bound:
        shapes["model.lower_bounds"] = (L, d)
    for i in range(L):
        p = f"model.layers.{i}."
        shapes[p + "attn_norm.weight"] = (d,)
        for proj in ("i_proj", "f_proj", "g_proj", "o_proj"):
            shapes[p + f"attn.{proj}.weight"] = (d, d)
            shapes[p + f"attn.{proj}.norm.weight"] = (d,)
        shapes[p + "attn.g_norm.weight"] = (d,)
        shapes[p + "mlp_norm.weight"] = (d,)
        shapes[p + "mlp.gate_proj.weight"] = (2 * I, d)
        shapes[p + "mlp.gate_proj.norm.weight"] = (d,)
        shapes[p + "mlp.down_proj.weight"] = (d, I)
        shapes[p + "mlp.down_proj.norm.weight"] = (I,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, d)
    shapes["lm_head.norm.weight"] = (d,)
    return shapes


def header_problems(shapes: dict[str, tuple[int, ...]], floating: dict[str, bool], cfg: MMFreeConfig) -> list[str]:
    """Every missing, unexpected, mis-shaped or non-float tensor, from names, shapes and dtypes alone."""
    exp = expected_shapes(cfg)
    problems = []
    for name, shape in exp.items():
        if name not in shapes:
            problems.append(f"missing {name} (expected shape {list(shape)})")
        elif tuple(shapes[name]) != shape:
            problems.append(f"{name}: expected shape {list(shape)}, found {list(shapes[name])}")
    tied_ok = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    for name in sorted(set(shapes) - set(exp) - tied_ok):
        problems.append(f"unexpected {name} (shape {list(shapes[name])})")
    for name in shapes:
        if name in exp and not floating[name]:
            problems.append(f"{name}: expected a float tensor (fp32, bf16 or fp16)")
    return problems


def raise_problems(problems: list[str], cfg: MMFreeConfig, where: str) -> None:
    if problems:
        raise MmfreeError(f"{where} does not match the config ({cfg.num_hidden_layers} layers, d={cfg.hidden_size}, "
                          f"I={cfg.intermediate}, V={cfg.vocab_size}):\n  " + "\n  ".join(problems))


def check_state_dict(sd: dict, cfg: MMFreeConfig, where: str = "checkpoint") -> None:
    """Raise one error that lists every missing, unexpected, mis-shaped and non-finite tensor."""
    import torch

    problems = header_problems({k: tuple(v.shape) for k, v in sd.items()},
                               {k: v.is_floating_point() for k, v in sd.items()}, cfg)
    exp = expected_shapes(cfg)
    for name, t in sd.items():
        if name in exp and t.is_floating_point() and tuple(t.shape) == exp[name] and not torch.isfinite(t.float()).all():
            problems.append(f"{name}: contains NaN or inf")
    raise_problems(problems, cfg, where)


def open_safetensors(f: Path):
    """``safetensors.safe_open`` (memory-mapped, torch) with one clear error for a damaged or truncated file."""
    from safetensors import safe_open

    try:
        return safe_open(str(f), framework="pt")
    except Exception as exc:   # safetensors raises its own SafetensorError / OSError for damaged files
        raise MmfreeError(f"{f} is not a readable safetensors file ({exc}); it may be truncated or damaged: "
                          "download it again") from exc


def load_model(path: str | os.PathLike = DEFAULT, dtype=None, device="cpu"):
    """Load a checkpoint directory (or ``"default"``) into :class:`MMFreeForCausalLM`, in eval mode.

    ``dtype`` defaults to float32 whatever the file holds. Raises :class:`MmfreeError` with every
    mismatch listed when tensors are missing, unexpected or mis-shaped.
    """
    import torch

    from mmfree.pymodel.model import MMFreeForCausalLM

    d = resolve(path)
    if not (d / "config.json").exists():
        raise MmfreeError(f"no config.json in {d}; is this a MatMul-free LM checkpoint directory?")
    if not (d / "config.json").is_file():
        raise MmfreeError(f"{d / 'config.json'} is not a file; a checkpoint holds config.json as a JSON file")
    cfg = MMFreeConfig.from_json(d / "config.json")
    sd = read_state_dict(d)
    check_state_dict(sd, cfg, where=str(d))
    model = MMFreeForCausalLM(cfg)
    sd = {k: v.to(dtype or torch.float32) for k, v in sd.items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)  # check_state_dict covered these
    model.source_dir = d
    return model.to(device).eval()


def save_model(model, path: str | os.PathLike, tokenizer_file: str | os.PathLike | None = None,
               dtype=None, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``) atomically to directory ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    sd = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer_file is not None:
            (tmp / "tokenizer.json").write_bytes(Path(tokenizer_file).read_bytes())
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
    return path
