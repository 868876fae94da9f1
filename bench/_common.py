"""Helpers shared by the bench scripts: recording results into docs/ between markers, random model exports."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def command_line() -> str:
    return "python " + " ".join([Path(sys.argv[0]).relative_to(ROOT).as_posix() if Path(sys.argv[0]).is_absolute()
                                 else sys.argv[0]] + sys.argv[1:])


def _section(doc: str, marker: str) -> tuple[Path, str, str, str]:
    """docs/<doc>'s path, its text ("" if absent) and the ``marker`` section's begin and end lines."""
    path = ROOT / "docs" / doc
    return path, path.read_text() if path.exists() else "", f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"


def write_section(doc: str, marker: str, body: str) -> None:
    """Replace the text between ``<!-- marker:begin -->`` and ``<!-- marker:end -->`` in docs/<doc> (appended if absent)."""
    from mmfree.atomic import write_text

    path, text, begin, end = _section(doc, marker)
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    write_text(path, text)


def read_section(doc: str, marker: str) -> str:
    """The text between ``<!-- marker:begin -->`` and ``<!-- marker:end -->`` in docs/<doc> ("" if absent)."""
    _, text, begin, end = _section(doc, marker)
    if begin not in text or end not in text:
        return ""
    return text.split(begin, 1)[1].split(end, 1)[0]


def export_random_model(name: str, d: int, inter: int, layers: int, vocab: int, subdir: str) -> Path:
    """A random model of that shape (seed 0; norm weights near 1, projection weights 0.05 sigma, unit-variance
    embedding), exported once per numerics/layout/export/model source under ``build/<subdir>/`` (cached)."""
    import hashlib
    from importlib import resources

    from mmfree.config import cache_dir

    h = hashlib.sha256()
    for mod in ("numerics.py", "layout.py", "export.py", "model.py"):
        h.update(resources.files("mmfree.pymodel").joinpath(mod).read_bytes())
    out = cache_dir() / subdir / f"{name}-{h.hexdigest()[:12]}"
    if not (out / "manifest.json").exists():
        import torch

        from mmfree.pymodel.config import MMFreeConfig
        from mmfree.pymodel.export import export_model
        from mmfree.pymodel.model import MMFreeForCausalLM

        torch.manual_seed(0)
        model = MMFreeForCausalLM(MMFreeConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers,
                                               intermediate_size=inter)).eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if pname.endswith("norm.weight"):
                    p.copy_(1 + 0.3 * torch.randn_like(p))
                elif pname.endswith("proj.weight") or pname == "lm_head.weight":
                    p.copy_(torch.randn_like(p) * 0.05)
                elif pname == "model.embeddings.weight":
                    p.copy_(torch.randn_like(p))
        export_model(model, out)
    return out


def deep_size(obj, seen=None) -> int:
    """Bytes a Python object graph holds (``sys.getsizeof`` of every dict / list / tuple reached; a numpy array
    counts as its own ``getsizeof``, data included); each object once."""
    import numpy as np

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    n = sys.getsizeof(obj)
    if isinstance(obj, np.ndarray):
        return n
    if isinstance(obj, dict):
        n += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        n += sum(deep_size(v, seen) for v in obj)
    return n
