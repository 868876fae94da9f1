"""`mmfree demo`: the main job on the embedded default model, each stage reporting what it could do."""

from __future__ import annotations

import json


def run_demo(args, out) -> int:
    report: dict = {"stages": []}

    def stage(name: str, ok: bool, detail: str) -> None:
        report["stages"].append({"stage": name, "ok": ok, "detail": detail})
        if not args.json:
            print(f"[{'ok' if ok else '--'}] {name}: {detail}", file=out)

    from mmfree.toolchain import probe_all

    missing = [t.name for t in probe_all() if not t.found and t.name in ("torch", "amaranth", "verilator", "cocotb")]
    stage("toolchain", not missing, "all tools found" if not missing else "missing: " + ", ".join(missing))
    if args.json:
        print(json.dumps(report, indent=2), file=out)
    return 0
