"""The main job on the embedded default model (the README's first command runs `mmfree demo`)."""

import io
import json
import subprocess
import sys
from argparse import Namespace

from mmfree.demo import run_demo


def test_demo_float_and_int_stages_agree():
    out = io.StringIO()
    rc = run_demo(Namespace(prompt="def ", tokens=12, no_sim=True, json=True), out)
    report = json.loads(out.getvalue())
    stages = {s["stage"]: s for s in report["stages"]}
    assert rc == 0
    assert stages["hardware-exact float mode"]["ok"] is True
    assert stages["integer reference"]["tokens"] == stages["hardware-exact float mode"]["tokens"]
    assert len(stages["float"]["tokens"]) == 12


def test_generate_default_model_prints_code():
    out = subprocess.run([sys.executable, "-m", "mmfree", "generate", "--model", "default", "--prompt", "def ",
                          "--max-new-tokens", "40", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert len(res["tokens"]) == 40
    text = res["text"]
    assert any(tok in text for tok in ("(", ":", "self", "return", "=")), text
