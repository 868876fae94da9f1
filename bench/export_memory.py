"""Peak memory and time of `mmfree export` (streaming) at the released checkpoints' shapes, in one run.

For each shape a random checkpoint in the official layout is written first (one safetensors shard per
layer plus ``model.safetensors.index.json``, as Hugging Face shards large models; weights ~N(0, 0.05),
norm weights ~1 + 0.3 N(0, 1)), then ``export_checkpoint`` runs in a fresh child process whose peak
resident set size (``ru_maxrss``) is read back. The peak of the largest single tensor's conversion is
what bounds it, so a larger model projects from its largest tensor (printed per shape).

    python bench/export_memory.py [--shapes 370M,1.3B] [--dtype bfloat16] [--record]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, write_section  # noqa: E402

CHILD = """
import resource, sys, time
from mmfree.pymodel.export import export_checkpoint
t0 = time.perf_counter()
export_checkpoint(sys.argv[1], sys.argv[2])
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_random_checkpoint(d: Path, preset: str, dtype_name: str) -> tuple[int, int]:
    """A random official-layout checkpoint, one shard per layer; returns (parameters, largest tensor numel)."""
    import torch
    from safetensors.torch import save_file

    from mmfree.pymodel.checkpoint import expected_shapes
    from mmfree.pymodel.config import MMFreeConfig

    cfg = MMFreeConfig.preset(preset)
    dtype = getattr(torch, dtype_name)
    shapes = expected_shapes(cfg)
    groups: dict[str, dict] = {}
    for name, shape in shapes.items():
        shard = f"layer-{name.split('.')[2]}" if name.startswith("model.layers.") else "rest"
        groups.setdefault(shard, {})[name] = shape
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    weight_map = {}
    for shard, names in groups.items():
        tensors = {}
        for name, shape in names.items():
            t = torch.randn(shape, generator=g)
            t = 1 + 0.3 * t if name.endswith("norm.weight") else t if "embeddings" in name or "lower" in name else 0.05 * t
            tensors[name] = t.to(dtype)
            weight_map[name] = f"{shard}.safetensors"
        save_file(tensors, str(d / f"{shard}.safetensors"), metadata={"format": "pt"})
        del tensors
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    conf = cfg.to_dict()
    conf.pop("bitlinear_norm_eps")    # as the released config.json: no mmfree keys
    (d / "config.json").write_text(json.dumps(conf))
    numels = [int(torch.Size(s).numel()) for s in shapes.values()]
    return sum(numels), max(numels)


def measure(preset: str, dtype_name: str, tmp: Path) -> dict:
    ck = tmp / f"ck-{preset}"
    n_params, largest = write_random_checkpoint(ck, preset, dtype_name)
    ckpt_bytes = sum(f.stat().st_size for f in ck.glob("*.safetensors"))
    out = subprocess.run([sys.executable, "-c", CHILD, str(ck), str(tmp / f"img-{preset}")], capture_output=True,
                         text=True, check=True)
    seconds, maxrss_kib = out.stdout.split()
    img = json.loads((tmp / f"img-{preset}" / "manifest.json").read_text())
    for f in ck.glob("*"):
        f.unlink()
    return {"shape": preset, "parameters": n_params, "checkpoint_dtype": dtype_name, "checkpoint_bytes": ckpt_bytes,
            "image_bytes": img["weights_bytes"], "export_seconds": float(seconds),
            "peak_rss_bytes": int(maxrss_kib) * 1024, "largest_tensor_numel": largest}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="370M,1.3B", help="comma-separated presets (370M, 1.3B, 2.7B)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="checkpoint tensor dtype")
    ap.add_argument("--record", action="store_true", help="write the table into docs/numerics.md")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=Path(tempfile.gettempdir())) as tmp:
        for preset in args.shapes.split(","):
            t0 = time.perf_counter()
            rows.append(measure(preset.strip(), args.dtype, Path(tmp)))
            print(f"{preset}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['shape']:>5}: {r['parameters'] / 1e9:.2f} B parameters ({r['checkpoint_dtype']}, "
                  f"{r['checkpoint_bytes'] / 2**30:.2f} GiB) -> image {r['image_bytes'] / 2**20:.1f} MiB in "
                  f"{r['export_seconds']:.0f} s, peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB")
    if args.record:
        table = ("| shape | parameters | checkpoint | image | export time | peak RSS |\n|---|---|---|---|---|---|\n"
                 + "".join(f"| {r['shape']} (random) | {r['parameters'] / 1e9:.2f} B | {r['checkpoint_dtype']}, "
                           f"{r['checkpoint_bytes'] / 2**30:.2f} GiB | {r['image_bytes'] / 2**20:.1f} MiB | "
                           f"{r['export_seconds']:.0f} s | {r['peak_rss_bytes'] / 2**30:.2f} GiB |\n" for r in rows))
        body = (f"Streaming export, measured on this machine ({platform.machine()}, Python "
                f"{platform.python_version()}, peak RSS of the exporting process from `ru_maxrss`):\n\n{table}\n"
                f"Command: `{command_line()}`")
        write_section("numerics.md", "export-memory", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
