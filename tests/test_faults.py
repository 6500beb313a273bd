"""Faults from outside the code end in one line naming the file and the fix, with no traceback
and no empty output tree: a damaged or odd Omniglot zip, a run.json the suite did not write, a
full or read-only disk, and several runs failing together."""

from __future__ import annotations

import errno
import io
import os
import zipfile
from pathlib import Path

import pytest

from maml_bench import runner
from maml_bench.cli import main
from maml_bench.errors import UserError
from maml_bench.tasks.fewshot import omniglot

TINY = ["run", "sinusoid-table2-v1", "--scale", "tiny", "--method", "maml", "--no-report"]
RUN_DIR = Path("sinusoid-table2-v1/raw/maml/seed-0")


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("maml-bench: error: ")]
    assert len(errors) == 1, err
    return errors[0]


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (105, 105), 255).save(buffer, format="PNG")
    return buffer.getvalue()


def omniglot_root(tmp_path: Path, extra: dict[str, bytes] | None = None,
                  first: bytes | None = None) -> Path:
    """Both sets as zips with one character each (enough for the fault to be met first);
    `first`: the bytes of the first drawing instead of a good PNG."""
    root = tmp_path / "omniglot"
    root.mkdir(parents=True)
    for name in omniglot.SETS:
        with zipfile.ZipFile(root / f"{name}.zip", "w", zipfile.ZIP_STORED) as archive:
            for i in range(1, 21):
                blob = first if i == 1 and first is not None else _png()
                archive.writestr(f"{name}/Latin/character01/0001_{i:02d}.png", blob)
            for member, blob in (extra or {}).items():
                archive.writestr(f"{name}/{member}", blob)
    return root


def test_a_damaged_zip_member_is_named(tmp_path, capsys):
    root = omniglot_root(tmp_path)
    path = root / "images_background.zip"
    data = bytearray(path.read_bytes())
    at = data.index(_png()) + 40  # inside the first member's stored bytes: its CRC fails
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"images_background\.zip: member images_background/"
                       r"Latin/character01/0001_01\.png is damaged.*fetch the zip again"):
        omniglot.preprocess(root)
    assert main(["data", "check", "omniglot", str(root)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "0001_01.png is damaged" in err


def test_a_readme_is_ignored_and_a_stray_png_refused(tmp_path):
    root = omniglot_root(tmp_path, {"README.txt": b"hello"})
    with pytest.raises(UserError, match="found 2 characters"):  # got past the README
        omniglot.preprocess(root)
    root = omniglot_root(tmp_path / "b", {"x.png": _png()})
    with pytest.raises(UserError, match=r"member images_background/x\.png is not at "
                       r"<alphabet>/<character>/<file>\.png"):
        omniglot.preprocess(root)


def _broken_pngs() -> dict[str, bytes]:
    """PNGs inside an intact zip that Pillow refuses in each of its ways: a chunk type that is
    not letters (SyntaxError), an IHDR shorter than 13 bytes (ValueError), a file cut short
    (OSError), a decompression bomb (DecompressionBombError)."""
    import struct
    import zlib as z

    good = _png()
    signature, ihdr = good[:8], good[16:29]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", z.crc32(kind + data)))

    huge = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 0, 0, 0, 0)
    return {"broken-chunk": signature + chunk(b"IHDR", ihdr) + chunk(b"\x00\x01\x02\x03", b""),
            "short-header": signature + chunk(b"IHDR", ihdr[:12]),
            "cut-short": good[: len(good) // 2],
            "bomb": signature + chunk(b"IHDR", huge) + chunk(b"IEND", b"")}


@pytest.mark.parametrize("kind", ["broken-chunk", "short-header", "cut-short", "bomb"])
def test_a_damaged_png_in_an_intact_zip_is_one_line_in_a_run(tmp_path, capsys, kind):
    root = omniglot_root(tmp_path / "data", first=_broken_pngs()[kind])
    with pytest.raises(UserError, match=r"0001_01\.png is not a readable PNG"):
        omniglot.preprocess(root)
    out = tmp_path / "out"
    code = main(["run", "omniglot-5w1s-v1", "--scale", "tiny", "--method", "maml",
                 "--no-report", "--data-root", str(tmp_path / "data"), "--out", str(out)])
    assert code == 2
    assert "0001_01.png is not a readable PNG" in one_error(capsys)
    assert not out.exists() or not any(out.rglob("*"))


#: a run.json's real contents changed by hand: every key there, a type or a field wrong
EDITS = {"config emptied": lambda info: {**info, "config": {}},
         "rows a list": lambda info: {**info, "records_rows": [1]},
         "hash a number": lambda info: {**info, "config_hash": 1},
         "rows gone, config emptied": lambda info: {
             **{k: v for k, v in info.items() if k != "records_rows"}, "config": {}}}


@pytest.mark.parametrize("content", ["[]", "{}", '{"config_hash": 1}', *EDITS])
def test_a_run_json_the_suite_did_not_write_is_refused(tmp_path, capsys, content):
    import json

    out = tmp_path / "out"
    assert main([*TINY, "--out", str(out)]) == 0
    info = out / RUN_DIR / "run.json"
    if content in EDITS:
        content = json.dumps(EDITS[content](json.loads(info.read_text())))
    info.write_text(content)
    capsys.readouterr()
    for command in (["report", "--out", str(out)], [*TINY, "--out", str(out)]):
        assert main(command) == 2
        line = one_error(capsys)
        assert f"{info} is not a run.json this suite wrote" in line
        assert "delete the run's folder" in line


def test_a_full_disk_mid_run_is_one_line_and_leaves_no_tree(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert main([*TINY, "--out", str(out)]) == 1  # the machine's fault: exit 1, not 2
    line = one_error(capsys)
    assert "cannot write" in line and "(No space left on device): free space or choose --out" \
        in line
    assert list(out.rglob("*")) == []  # the run's folders are gone again
    fresh = tmp_path / "fresh" / "out"  # an --out the command made itself is removed too
    assert main([*TINY, "--out", str(fresh)]) == 1
    one_error(capsys)
    assert not fresh.exists() and not fresh.parent.exists()


def test_a_read_only_folder_at_the_lock_leaves_no_tree(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(runner, "open", refuse, raising=False)
    assert main([*TINY, "--out", str(out)]) == 1
    line = one_error(capsys)
    assert f"cannot write {out / RUN_DIR / runner.LOCK_FILE} (Permission denied)" in line
    assert list(out.rglob("*")) == []


def test_a_full_disk_during_report_is_one_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main([*TINY, "--out", str(out)]) == 0
    capsys.readouterr()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    before = sorted(out.rglob("*"))
    assert main(["report", "--out", str(out)]) == 1
    assert "(No space left on device): free space or choose --out" in one_error(capsys)
    assert sorted(out.rglob("*")) == before  # no empty tables/ or figures/ folder


@pytest.mark.parametrize("failing", [("maml", "fomaml"), ("fomaml",)])
def test_runs_failing_together_say_what_was_written(tmp_path, capsys, monkeypatch, failing):
    build = runner._build

    def refuse(run):  # a per-run refusal, like a setting a benchmark cannot take
        if run.method in failing:
            raise UserError(f"{run.method} refused")
        return build(run)

    monkeypatch.setattr(runner, "_build", refuse)
    out = tmp_path / "out"
    assert main(["run", "sinusoid-table2-v1", "--scale", "tiny", "--method", "maml",
                 "--method", "fomaml", "--no-report", "--out", str(out)]) == 2
    line = one_error(capsys)
    assert f"{len(failing)} of 2 runs failed" in line and "others" not in line
    if len(failing) == 2:
        assert "no records were written" in line
        assert list(out.rglob("*")) == []  # no run folder left to look like a started run
    else:
        assert "records of 1 run were written" in line


ALLOCATOR_ERRORS = {
    "cpu": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. "
                                "DefaultCPUAllocator: can't allocate memory: you tried to "
                                "allocate 67108864 bytes. Error code 12"),
    "python": MemoryError,  # an empty message
    "cuda": lambda: __import__("torch").OutOfMemoryError("CUDA out of memory. Tried to allocate"),
}


@pytest.mark.parametrize("kind", list(ALLOCATOR_ERRORS))
def test_running_out_of_memory_mid_run_is_one_line_and_keeps_the_checkpoint(
        tmp_path, capsys, monkeypatch, kind):
    """Settings above the memory floor's estimate that the allocator then refuses: one line
    naming what to lower, exit 1, the last checkpoint kept; the same command resumes there."""
    import torch

    from maml_bench.algorithms.maml import MAML
    from maml_bench.runner import CHECKPOINT_FILE

    real = MAML.train_step

    def refused_at_15(self, iteration):
        if iteration == 15:
            raise ALLOCATOR_ERRORS[kind]()
        return real(self, iteration)

    out = tmp_path / "out"
    monkeypatch.setattr(MAML, "train_step", refused_at_15)
    assert main([*TINY, "--out", str(out)]) == 1
    line = one_error(capsys)
    assert "ran out of memory" in line and "lower meta_batch, task_chunk" in line
    if kind == "cpu":
        assert "you tried to allocate 67108864 bytes" in line
    state = torch.load(out / RUN_DIR / CHECKPOINT_FILE, weights_only=True)
    assert state["iteration"] == 10  # the checkpoint before the failure
    monkeypatch.setattr(MAML, "train_step", real)
    assert main([*TINY, "--out", str(out)]) == 0
    assert (out / RUN_DIR / "records.csv.gz").is_file()


def test_a_full_disk_at_the_lock_is_one_line_and_leaves_no_tree(tmp_path, capsys, monkeypatch):
    """The lock file's pid is the first byte a run writes: ENOSPC there, with the disk's
    folders creatable (their entries fit; the data does not)."""
    real = os.write

    def full_at_the_lock(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(runner.LOCK_FILE):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(runner.os, "write", full_at_the_lock)
    out = tmp_path / "out"
    assert main([*TINY, "--out", str(out)]) == 1
    line = one_error(capsys)
    assert runner.LOCK_FILE in line and "No space left on device" in line
    assert not out.exists() or list(out.rglob("*")) == []


def test_a_full_disk_later_in_a_run_keeps_the_earlier_checkpoint(tmp_path, capsys, monkeypatch):
    """ENOSPC at the second checkpoint: the first stays whole and the run resumes from it."""
    import torch

    real, calls = os.fsync, []

    def full_from_the_second(fd):
        calls.append(fd)
        if len(calls) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    out = tmp_path / "out"
    monkeypatch.setattr(os, "fsync", full_from_the_second)
    assert main([*TINY, "--out", str(out)]) == 1
    assert "No space left on device" in one_error(capsys)
    ckpt = out / RUN_DIR / runner.CHECKPOINT_FILE
    assert torch.load(ckpt, weights_only=True)["iteration"] == 10
    monkeypatch.setattr(os, "fsync", real)
    assert main([*TINY, "--out", str(out)]) == 0


def test_a_torn_run_json_is_named_by_report(tmp_path, capsys):
    """A run.json cut short (a copy interrupted): report names it, not the records beside it."""
    out = tmp_path / "out"
    assert main([*TINY, "--out", str(out)]) == 0
    info = out / RUN_DIR / "run.json"
    info.write_text(info.read_text()[:40])
    capsys.readouterr()
    assert main(["report", "--out", str(out)]) == 2
    line = one_error(capsys)
    assert f"its run.json {info} cannot be read" in line


def test_an_error_that_is_not_memory_is_not_called_memory(tmp_path, monkeypatch):
    from maml_bench.algorithms.maml import MAML

    def broken(self, iteration):
        raise RuntimeError("a bug, not the allocator")

    monkeypatch.setattr(MAML, "train_step", broken)
    with pytest.raises(RuntimeError, match="a bug, not the allocator"):
        main([*TINY, "--out", str(tmp_path / "out")])
