"""Atomic writes leave no debris and respect the user's umask (mkstemp alone would make every result 0600)."""

import os
import stat

import pytest

import hashlib
import json

from bench import records
from bench.io import atomic_dir, atomic_path, atomic_write_text, checksums, damage, files_under, manifest_problems, read_manifest, remove_debris, write_manifest


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_files_and_folders_follow_the_umask(tmp_path, umask_027):
    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("y")
        (d / "private").write_text("z")
        (d / "private").chmod(0o600)  # as safetensors writes its files
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "d" / "private").stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "r.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["r.txt"]


def test_checksums_are_sha256_relative_to_the_root_and_find_every_kind_of_damage(tmp_path):
    (tmp_path / "run" / "artifact").mkdir(parents=True)
    files = {"run/artifact/a.safetensors": b"weights" * 100, "run/cost.json": b"{}", "run/.a.tmp": b"debris"}
    for rel, data in files.items():
        (tmp_path / rel).write_bytes(data)
    record = checksums(files_under(tmp_path / "run"), tmp_path)
    assert set(record) == {"run/artifact/a.safetensors", "run/cost.json"}  # hidden temporaries are not outputs
    assert record["run/cost.json"] == {"sha256": hashlib.sha256(b"{}").hexdigest(), "bytes": 2}
    assert damage(record, tmp_path) == []
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (tmp_path / "run").rename(moved / "run")
    assert damage(record, moved) == []  # relative paths: the record moves with the folder
    weights = moved / "run" / "artifact" / "a.safetensors"
    weights.write_bytes(b"weightz" + weights.read_bytes()[7:])  # same size, one byte changed
    (moved / "run" / "cost.json").unlink()
    assert damage(record, moved) == ["run/artifact/a.safetensors is corrupt (its checksum changed)", "run/cost.json is missing"]
    (moved / "manifest.json").write_text('{"files": ' + json.dumps(record) + "}")
    assert manifest_problems(moved / "manifest.json", moved) == damage(record, moved)
    (moved / "manifest.json").write_text('{"files": [1, 2')
    assert manifest_problems(moved / "manifest.json", moved) == ["manifest.json is unreadable"]


def test_one_manifest_format_with_extras_and_the_older_records_read_as_manifests(tmp_path):
    """Every stored output is verified through one format ({"format", "files", extras}); the records older
    results dirs kept (checksums flat, or under "checksums" beside a sweep's extras) read as the same."""
    (tmp_path / "a.png").write_bytes(b"png")
    doc = write_manifest(tmp_path / "m.json", [tmp_path / "a.png"], tmp_path, images={"a.png": ["p", 0, 1.0]})
    assert doc["format"] == "adapterbench-manifest/1" and list(doc["files"]) == ["a.png"] and doc["images"] == {"a.png": ["p", 0, 1.0]}
    assert read_manifest(tmp_path / "m.json") == doc and manifest_problems(tmp_path / "m.json", tmp_path) == []
    record = checksums([tmp_path / "a.png"], tmp_path)
    (tmp_path / "flat.json").write_text(json.dumps(record))
    (tmp_path / "sweep.json").write_text(json.dumps({"images": {}, "checksums": record}))
    assert read_manifest(tmp_path / "flat.json")["files"] == record == read_manifest(tmp_path / "sweep.json")["files"]
    (tmp_path / "a.png").write_bytes(b"PNG")
    assert manifest_problems(tmp_path / "flat.json", tmp_path) == ["a.png is corrupt (its checksum changed)"]


def test_an_unchanged_file_is_hashed_once_per_process_and_a_changed_one_again(tmp_path, monkeypatch):
    from bench import io

    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(io.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(io, "_HASHED", {})
    old = tmp_path / "old.bin"
    old.write_bytes(b"a" * 1000)
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))  # last modified long ago
    new = tmp_path / "new.bin"
    new.write_bytes(b"b" * 1000)
    record = checksums([old, new], tmp_path)
    assert damage(record, tmp_path) == [] and len(calls) == 3  # the fresh file is hashed again: it may still change unseen
    handed = io.known_hashes([old, new])
    assert list(handed) == [str(old.resolve())]
    monkeypatch.setattr(io, "_HASHED", {})  # another process: nothing known until it is handed over
    io.trust_hashes(handed)
    assert damage(record, tmp_path) == [] and len(calls) == 4
    old.write_bytes(b"c" + b"a" * 999)  # a same-size rewrite gets a new mtime: hashed, and found
    assert damage(record, tmp_path) == ["old.bin is corrupt (its checksum changed)"] and len(calls) == 6


def test_files_a_stage_has_just_written_are_hashed_once(tmp_path, monkeypatch):
    """A sweep's manifest hashes its fresh images; the stage record that lists them then reads none again."""
    from bench import io

    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(io, "_HASHED", {})
    images = [tmp_path / "images" / f"{i}.png" for i in range(3)]
    images[0].parent.mkdir()
    for f in images:
        atomic_path_write(f, b"png" + bytes([len(calls)]))
    write_manifest(images[0].parent / "images.json", images, images[0].parent, fresh=True)
    monkeypatch.setattr(io.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    records.write_stage(tmp_path, "scores_r", [{"run_id": "r", "metric": "m", "value": 1.0}], outputs=images)
    assert len(calls) == 1  # the rows file's bytes only; images.json itself is not among the outputs here


def atomic_path_write(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def test_a_stage_with_damaged_outputs_or_rows_is_not_intact_and_the_check_changes_nothing(tmp_path):
    out = tmp_path / "images" / "x.png"
    out.parent.mkdir(parents=True)
    out.write_bytes(b"png")
    rows = [{"run_id": "r", "metric": "m", "value": 1.0, "status": "ok"}]
    records.write_stage(tmp_path, "scores_r", rows, outputs=[out.parent])
    assert records.stage_intact(tmp_path, "scores_r") and records.stage_problems(tmp_path, "scores_r") == []
    out.write_bytes(b"PNG")
    assert not records.stage_intact(tmp_path, "scores_r")
    assert records.stage_problems(tmp_path, "scores_r") == ["images/x.png is corrupt (its checksum changed)"]
    assert records.stage_file(tmp_path, "scores_r").exists() and records.outputs_file(tmp_path, "scores_r").exists()  # a pure check
    records.discard_stage(tmp_path, "scores_r", [out.parent])  # the explicit discard
    assert not records.stage_file(tmp_path, "scores_r").exists() and not records.outputs_file(tmp_path, "scores_r").exists() and not out.parent.exists()
    records.write_stage(tmp_path, "train_r", rows)
    records.stage_file(tmp_path, "train_r").write_bytes(b"PAR1 truncated")
    assert [p.split(" (")[0] for p in records.stage_problems(tmp_path, "train_r")] == ["rows/train_r.parquet is unreadable"]
    # A rows file swapped for another valid one (here: the same columns, no rows) is damage as well.
    records.write_stage(tmp_path, "train_r", rows)
    records.frame([]).to_parquet(records.stage_file(tmp_path, "train_r"), index=False)
    assert records.stage_problems(tmp_path, "train_r") == ["rows/train_r.parquet is corrupt (its checksum changed)"]


def test_debris_of_killed_writers_is_removed_and_live_writes_are_not(tmp_path):
    import subprocess
    import sys

    # A writer that is killed mid-write leaves its temporary behind: a child process stands in for it.
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path; from bench.io import atomic_path, atomic_dir\n"
            "a = atomic_path(Path(sys.argv[2]) / 'x.png'); a.__enter__()\n"
            "d = atomic_dir(Path(sys.argv[2]) / 'folder'); t = d.__enter__(); (t / 'f').write_text('y')\n"
            "print('ready', flush=True); time.sleep(60)")
    import pathlib

    child = subprocess.Popen([sys.executable, "-c", code, str(pathlib.Path(__file__).resolve().parents[1]), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    with atomic_path(tmp_path / "mine.png") as live:  # this process's write in progress
        live.write_bytes(b"png")
        assert remove_debris(tmp_path) == 0  # the child is alive: its temporaries are writes in progress
        child.kill()
        child.wait()
        assert remove_debris(tmp_path) == 2  # the killed child's file and folder
        assert live.exists()
    (tmp_path / ".other.png.otherhost~1~abc.tmp").write_text("another host's")
    assert remove_debris(tmp_path) == 0 and sorted(p.name for p in tmp_path.iterdir()) == [".other.png.otherhost~1~abc.tmp", "mine.png"]


def _age(path, seconds=10):
    """Back-date a file's mtime, as a file written long ago (recent writes are not remembered: RACY_NS)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


def test_a_models_weights_digest_follows_every_byte_of_small_files_and_samples_of_large_ones(tmp_path, monkeypatch):
    """The stage keys' weights digest (`weights_digest`): one flipped bit in a small file changes it; a file
    above WHOLE_FILE_BYTES is fingerprinted by its size and three samples (start, middle, end), checked here
    against a hash computed independently, and a byte outside the samples is, by design, not read."""
    from bench import io

    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    small, big = model / "unet" / "config.json", model / "unet" / "weights.bin"
    small.write_bytes(b'{"in_channels": 4}')
    data = bytearray(os.urandom(1000))
    big.write_bytes(bytes(data))
    for f in (small, big):
        _age(f)
    monkeypatch.setattr(io, "WHOLE_FILE_BYTES", 300)
    monkeypatch.setattr(io, "SAMPLE_BYTES", 100)
    expected = hashlib.sha256(b"1000" + bytes(data[:100]) + bytes(data[450:550]) + bytes(data[900:])).hexdigest()
    assert io.sampled_hash(big) == expected
    assert io.sampled_hash(small) == hashlib.sha256(small.read_bytes()).hexdigest()
    before = io.weights_digest(model)
    assert io.weights_digest(model) == before
    assert io.weights_digest(big) != before  # a single file is its own model (a .safetensors checkpoint)

    def rewrite(path, offset):
        raw = bytearray(path.read_bytes())
        raw[offset] ^= 1
        path.write_bytes(bytes(raw))
        _age(path, 5)  # another mtime than before: the remembered digest is not used

    rewrite(small, 3)
    assert io.weights_digest(model) != before
    rewrite(small, 3)
    assert io.weights_digest(model) == before
    rewrite(big, 500)  # in the middle sample
    assert io.weights_digest(model) != before
    rewrite(big, 500)
    rewrite(big, 200)  # between two samples: not read
    assert io.weights_digest(model) == before


def test_a_weights_digest_is_remembered_only_while_no_file_changes(tmp_path, monkeypatch):
    from bench import io

    model = tmp_path / "model"
    model.mkdir()
    (model / "a.bin").write_bytes(b"x" * 10)
    _age(model / "a.bin")
    first = io.weights_digest(model)
    reads = []
    monkeypatch.setattr(io, "sampled_hash", lambda p: reads.append(p) or "h")
    assert io.weights_digest(model) == first and reads == []  # remembered: nothing read
    (model / "b.bin").write_bytes(b"y")  # a file added
    assert io.weights_digest(model) != first and len(reads) == 2
