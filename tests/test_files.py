import os
import stat

import pytest

from keynet.io.files import write_atomic


def test_written_file_has_the_permissions_of_a_plain_open(tmp_path):
    before = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.txt", lambda tmp: tmp.write_text("new"))
        plain = tmp_path / "b.txt"
        plain.write_text("plain")
    finally:
        os.umask(before)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "r.npz"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.npz"]
    write_atomic(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new"
