"""study.core.io: the atomic writers' folder swap and the one file hash."""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import pytest

from study.core.io import replace_dir_atomic, sha256_file, write_atomic


def test_sha256_file_is_the_files_sha256(tmp_path):
    f = tmp_path / "blob.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # over several read blocks
    f.write_bytes(data)
    assert sha256_file(f) == sha256_file(str(f)) == hashlib.sha256(data).hexdigest()


def test_write_atomic_takes_a_binary_writer(tmp_path):
    path = tmp_path / "cache.npz"
    write_atomic(path, lambda fh: np.savez(fh, a=np.arange(3)), "wb")
    assert np.load(path)["a"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["cache.npz"]  # no temp file left, no .npz added to its name


def test_replace_dir_atomic_swaps_the_whole_folder_or_keeps_the_old_one(tmp_path):
    dest = tmp_path / "export"

    def build(files: dict[str, str]):
        def fill(work):
            for name, text in files.items():
                write_atomic(work / name, lambda fh, text=text: fh.write(text))
            return sorted(files)
        return fill

    assert replace_dir_atomic(dest, build({"a.txt": "1", "b.txt": "2"})) == ["a.txt", "b.txt"]
    assert replace_dir_atomic(dest, build({"a.txt": "new"})) == ["a.txt"]
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt"] and (dest / "a.txt").read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o777 & ~umask  # shared like the files, not mkdtemp's 0700

    def broken(work):
        (work / "half.txt").write_text("x")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        replace_dir_atomic(dest, broken)
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt"] and (dest / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temp or old folder left
