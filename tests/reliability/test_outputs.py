"""No lost files: every command that writes a directory refuses to replace what is not its own earlier
output, refuses an output equal to / inside / holding an input, checks the location before any work, and
replaces its own earlier output atomically (issue 22, items 1 and 6)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from mmfree import MmfreeError
from mmfree import atomic as A
from mmfree.cli import main
from tests.pymodel.helpers import random_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt") / "m"
    random_checkpoint(d, seed=1, vocab_size=50, hidden_size=20, num_hidden_layers=1, intermediate_size=32)
    (d / "tokenizer.json").write_text("{}")
    return d


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_export_out_equal_to_model_is_refused_and_the_checkpoint_survives(ckpt, capsys):
    before = _snapshot(ckpt)
    assert main(["export", "--model", str(ckpt), "--out", str(ckpt)]) == 1
    assert "would destroy the input" in capsys.readouterr().err
    assert main(["export", "--model", str(ckpt), "--out", str(ckpt), "--force"]) == 1
    assert main(["export", "--model", str(ckpt), "--out", str(ckpt / "img")]) == 1      # inside the input
    assert main(["export", "--model", str(ckpt), "--out", str(ckpt.parent), "--force"]) == 1   # holds the input
    assert _snapshot(ckpt) == before


def test_export_refuses_foreign_dirs_and_files_and_force_replaces_only_its_own(ckpt, tmp_path, capsys):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "a.txt").write_text("keep me")
    assert main(["export", "--model", str(ckpt), "--out", str(foreign), "--force"]) == 1
    assert "not a project written by `mmfree export`" in capsys.readouterr().err
    assert (foreign / "a.txt").read_text() == "keep me"
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["export", "--model", str(ckpt), "--out", str(f)]) == 1
    assert "is a file" in capsys.readouterr().err and f.read_text() == "x"
    out = tmp_path / "img"
    assert main(["export", "--model", str(ckpt), "--out", str(out)]) == 0
    assert A.output_kind(out) == "export"
    assert main(["export", "--model", str(ckpt), "--out", str(out)]) == 1
    assert "pass --force" in capsys.readouterr().err
    assert main(["export", "--model", str(ckpt), "--out", str(out), "--force"]) == 0
    assert (out / "manifest.json").is_file() and not list(tmp_path.glob(f".img{A.TMP_TAG}*"))


def test_other_commands_refuse_foreign_directories(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("keep")
    assert main(["hls", "synth", "--board", "kv260", "--model", "default", "--out", str(foreign), "--force"]) == 1
    assert "not a project written by `mmfree hls synth`" in capsys.readouterr().err
    assert main(["build", "--board", "kv260", "--out", str(foreign), "--force", "--no-vivado"]) == 1
    assert "not a project written by `mmfree build`" in capsys.readouterr().err
    assert main(["train", "--out", str(foreign), "--steps", "1"]) == 1
    assert "not a project written by `mmfree train`" in capsys.readouterr().err
    assert (foreign / "keep.txt").read_text() == "keep"


def test_train_out_a_file_or_unwritable_fails_before_any_work(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["train", "--out", str(f), "--steps", "100000"]) == 1      # would train for hours first
    assert "is a file" in capsys.readouterr().err
    assert main(["train", "--out", str(f / "sub"), "--steps", "100000"]) == 1
    assert "cannot be created" in capsys.readouterr().err
    if os.geteuid() != 0:                                    # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert main(["train", "--out", str(ro / "run"), "--steps", "100000"]) == 1
            assert "cannot write" in capsys.readouterr().err
            assert main(["export", "--out", str(ro / "img")]) == 1
        finally:
            ro.chmod(0o700)


def test_check_output_dir_api(tmp_path):
    out = tmp_path / "o"
    assert A.check_output_dir(out, "export") == out.resolve()
    (out / "x").mkdir(parents=True)
    with pytest.raises(MmfreeError, match="--out .* is not empty and is not a project written by `mmfree export`"):
        A.check_output_dir(out, "export")
    A.write_marker(out, "build")
    with pytest.raises(MmfreeError, match=r"it holds the output of `mmfree build`"):
        A.check_output_dir(out, "export", force=True)
    A.check_output_dir(out, "build", force=True)
    A.check_output_dir(out, "build", reuse=True)
    with pytest.raises(MmfreeError, match="would destroy the input"):
        A.check_output_dir(tmp_path, "build", inputs=[out / "x"], force=True)


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path):
    dead = 2**22 + 12345                      # above pid_max on most systems: no such process
    assert not A.pid_alive(dead)
    stale = tmp_path / f".img{A.TMP_TAG}{dead}-abc"
    (stale / "payload").mkdir(parents=True)
    live = tmp_path / f".img{A.TMP_TAG}{os.getpid()}-def"     # ours, in use: kept
    live.mkdir()
    with A.output_dir(tmp_path / "img", "export") as tmp:
        (tmp / "f").write_text("1")
    assert not stale.exists() and live.exists()
    assert json.loads((tmp_path / "img" / A.MARKER).read_text())["kind"] == "export"


def test_directory_replacement_is_atomic_under_concurrent_writers(tmp_path):
    """Two writers replace one directory 30 times each while a reader checks it is always there and whole."""
    out = tmp_path / "d"
    with A.output_dir(out, "export") as tmp:
        (tmp / "v").write_text("init")
    errors, stop = [], threading.Event()

    def writer(tag):
        try:
            for i in range(30):
                with A.output_dir(out, "export") as tmp:
                    (tmp / "v").write_text(f"{tag}{i}")
        except BaseException as exc:          # reported below
            errors.append(exc)

    def reader():
        while not stop.is_set():
            try:
                (out / "v").read_text()
            except OSError as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=writer, args=(t,)) for t in "ab"]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert not errors, errors
    assert (out / "v").read_text() in ("a29", "b29")
    assert [p.name for p in tmp_path.iterdir()] == ["d"]          # no temporary left


def test_failed_write_leaves_the_old_output(tmp_path):
    out = tmp_path / "d"
    with A.output_dir(out, "export") as tmp:
        (tmp / "v").write_text("old")
    with pytest.raises(RuntimeError):
        with A.output_dir(out, "export") as tmp:
            (tmp / "v").write_text("new")
            raise RuntimeError("boom")
    assert (out / "v").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["d"]
