"""Write files so that nothing is ever half-written or lost.

* :func:`atomic_path` writes a file or directory to a temporary sibling and renames it into place; a
  directory is swapped in with one ``renameat2(RENAME_EXCHANGE)`` (no moment where neither the old nor the
  new directory exists; two concurrent writers both succeed, the last one wins). Files are fsynced first.
* :func:`check_output_dir` is the one guard every command that writes a directory (``export --out``,
  ``hls synth --out``, ``build --out``, ``train --out``) calls BEFORE any work: it refuses a file, a
  non-empty directory that is not an earlier output of the same command, an output equal to / inside /
  holding one of the inputs, and an unwritable location; ``force`` allows replacing an earlier output of ours.
* Temporaries are named ``.NAME.mmfree-tmp-PID-XXXX``; those of dead processes (a run killed with SIGKILL)
  are removed by the next write next to them (:func:`reap_stale`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mmfree import MmfreeError

#: File that marks a directory as written by an mmfree command: ``{"kind": "export", "mmfree": VERSION}``.
MARKER = ".mmfree-output.json"
TMP_TAG = ".mmfree-tmp-"


# ---- stale temporaries ---------------------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _owner_pid(name: str, tag: str) -> int | None:
    try:
        return int(name.split(tag, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return None


def reap_stale(folder: str | os.PathLike, tag: str = TMP_TAG) -> list[Path]:
    """Remove the entries of ``folder`` whose name carries ``tag`` + the pid of a process that no longer
    exists (left by a killed run). Returns what was removed. Never raises."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        pid = _owner_pid(p.name, tag) if tag in p.name else None
        if pid is None or pid == os.getpid() or pid_alive(pid):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


_system_tmp: list[str] = []


def system_tempdir() -> Path:
    """The temp folder outside any :func:`process_tempdir` (for files meant to outlive the command)."""
    return Path(_system_tmp[0] if _system_tmp else tempfile.gettempdir())


@contextmanager
def process_tempdir(prefix: str = "mmfree") -> Iterator[Path]:
    """Point every temporary file of this process and its children (``tempfile``, ``TMPDIR``) into one
    private folder, removed at the end of the block; the folders of killed runs (SIGKILL: no ``finally``)
    are removed by the next run (:func:`reap_stale`). Used around each CLI command."""
    base = system_tempdir()
    reap_stale(base, f"{prefix}{TMP_TAG}")
    d = Path(tempfile.mkdtemp(prefix=f"{prefix}{TMP_TAG}{os.getpid()}-", dir=base))
    old_tempdir, old_env = tempfile.tempdir, os.environ.get("TMPDIR")
    _system_tmp.append(str(base))
    tempfile.tempdir = str(d)
    os.environ["TMPDIR"] = str(d)
    try:
        yield d
    finally:
        _system_tmp.pop()
        tempfile.tempdir = old_tempdir
        if old_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_env
        shutil.rmtree(d, ignore_errors=True)


# ---- durability and the directory swap -----------------------------------------------------------------
def fsync_tree(path: Path) -> None:
    """fsync every file under ``path`` (or the file itself) and every directory, bottom-up."""
    if path.is_file():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        return
    for root, _dirs, files in os.walk(path, topdown=False):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(Path(root))


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    """Linux ``renameat2``; raises OSError (ENOSYS/EINVAL where the kernel or file system lacks it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(dst))


def swap_in_dir(new: Path, path: Path) -> Path | None:
    """Put directory ``new`` at ``path`` atomically. Returns where the previous ``path`` now is (inside the
    caller's temporary, to delete), or None when there was none."""
    for _ in range(8):
        try:
            _renameat2(new, path, _RENAME_EXCHANGE)
            return new
        except OSError as exc:
            if exc.errno == errno.ENOENT and not path.exists():
                try:
                    _renameat2(new, path, _RENAME_NOREPLACE)
                    return None
                except OSError as exc2:
                    if exc2.errno in (errno.EEXIST, errno.ENOTEMPTY):
                        continue          # a concurrent writer got there first: exchange with theirs
                    if exc2.errno not in (errno.ENOSYS, errno.EINVAL):
                        raise
            elif exc.errno not in (errno.ENOSYS, errno.EINVAL):
                raise
        # no renameat2 here: two renames (a short window in which path is absent)
        old = new.with_name(new.name + ".old")
        if path.exists():
            os.replace(path, old)
        os.replace(new, path)
        return old if old.exists() else None
    raise MmfreeError(f"could not replace {path}: other processes keep writing it at the same time")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically (files with
    ``rename``, directories with an exchange), after an fsync of everything written.

    Works for files and directories (the caller creates the yielded path). On an exception the temporary
    is removed and ``path`` is untouched. Stale temporaries of killed runs next to ``path`` are removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reap_stale(path.parent, f".{path.name}{TMP_TAG}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{TMP_TAG}{os.getpid()}-", dir=path.parent))
    target = tmp / "payload"
    try:
        yield target
        fsync_tree(target)
        if target.is_dir() and not target.is_symlink():
            swap_in_dir(target, path)
        else:
            os.replace(target, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing, never truncated) for the ``with`` block:
    concurrent processes (pytest workers, two CLI runs) building into one cache take turns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---- output directories of commands --------------------------------------------------------------------
def write_marker(folder: Path, kind: str) -> None:
    """Mark ``folder`` (being written) as the output of ``mmfree <kind>``."""
    from mmfree import __version__

    (Path(folder) / MARKER).write_text(json.dumps({"kind": kind, "mmfree": __version__}) + "\n")


def _json_field(path: Path, key: str):
    try:
        return json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


#: Outputs written before the marker existed, recognised by their own manifest (kind -> test).
_LEGACY = {
    "export": lambda d: _json_field(d / "manifest.json", "format") == "mmfree-image",
    "hls synth": lambda d: _json_field(d / "manifest.json", "generator") == "mmfree hls synth",
    "build": lambda d: _json_field(d / "build.json", "vlnv") is not None,
    "train": lambda d: (d / "checkpoints" / "last" / "trainer_state.json").is_file()
    or (d / "model" / "training.json").is_file(),
}


def output_kind(folder: Path) -> str | None:
    """The command that wrote ``folder`` (its marker's ``kind``), or None when it is not an mmfree output."""
    folder = Path(folder)
    kind = _json_field(folder / MARKER, "kind")
    if isinstance(kind, str):
        return kind
    return next((k for k, test in _LEGACY.items() if test(folder)), None)


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def _check_writable(out: Path, flag: str) -> None:
    """Create (and remove) a temporary directory where ``out``'s temporaries will go: the real check."""
    parent = out.parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise MmfreeError(f"{flag} {out}: {existing} is a file, so the folder cannot be created there; "
                          "choose another location")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        Path(tempfile.mkdtemp(prefix=f".{out.name}{TMP_TAG}{os.getpid()}-", dir=parent)).rmdir()
    except OSError as exc:
        raise MmfreeError(f"{flag} {out}: cannot write in {parent} ({exc.strerror or exc}); "
                          "choose a writable location") from None


def check_output_dir(out: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike | None] = (),
                     force: bool = False, flag: str = "--out", reuse: bool = False) -> Path:
    """Validate the output directory of ``mmfree <kind>`` before any work; returns its absolute path.

    Refuses (MmfreeError naming ``flag`` and the fix): a path that is a file; a path equal to, inside, or
    holding one of ``inputs``; a non-empty directory that is not an earlier output of ``mmfree <kind>``
    (its :data:`MARKER`); an earlier output unless ``force`` (replace it) or ``reuse`` (``train --resume``
    continues in it); a location where nothing can be written. Also removes stale temporaries there."""
    out = Path(out).expanduser().resolve()
    for inp in inputs:
        if inp is None:
            continue
        src = Path(inp).expanduser().resolve()
        if _inside(out, src) or _inside(src, out):
            rel = "is" if out == src else ("is inside" if _inside(out, src) else "holds")
            raise MmfreeError(f"{flag} {out} {rel} the input {src}: writing it would destroy the input; "
                              "choose a separate output directory")
    if out.exists() and not out.is_dir():
        raise MmfreeError(f"{flag} {out} is a file; give a directory path (new or empty)")
    if out.is_dir() and any(p.name != MARKER for p in out.iterdir()):       # only our marker: nothing to lose
        was = output_kind(out)
        if was != kind:
            what = f" (it holds the output of `mmfree {was}`)" if was else ""
            raise MmfreeError(f"{flag} {out} is not empty and is not a project written by `mmfree {kind}`{what}; "
                              "it would be replaced: choose a new or empty directory")
        if not (force or reuse):
            raise MmfreeError(f"{flag} {out} holds an earlier `mmfree {kind}` output; pass --force to replace it, "
                              "or choose a new directory")
    _check_writable(out, flag)
    reap_stale(out.parent, f".{out.name}{TMP_TAG}")
    return out


@contextmanager
def output_dir(out: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Write a command's output directory: yields an empty temporary directory; on success it is marked
    as ``kind``'s output and swapped in for ``out`` atomically (call :func:`check_output_dir` first)."""
    with atomic_path(out) as tmp:
        tmp.mkdir()
        yield tmp
        write_marker(tmp, kind)
