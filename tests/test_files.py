"""Files are replaced whole or not at all."""

import os
import stat

import pytest

from faults import full_disk, read_only
from tldr_core.errors import SaveError
from tldr_core.files import atomic_path, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "settings.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]


def test_a_full_disk_or_a_read_only_folder_is_a_clear_error_and_the_old_file_stays(tmp_path):
    target = tmp_path / "settings.json"
    write_text(target, "old")
    with full_disk(room=0), pytest.raises(SaveError, match=r"settings.json' could not be saved \(File too large\); "
                                                           r"nothing was half-written. Make room"):
        write_text(target, "new")
    with read_only(tmp_path), pytest.raises(SaveError, match="could not be saved"):
        write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["settings.json"]


def test_a_written_file_has_the_usual_permissions_not_private_ones(tmp_path):
    target = tmp_path / "export.wav"
    write_text(target, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
