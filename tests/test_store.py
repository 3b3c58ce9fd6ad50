"""Image files on disk: temp-then-rename, temp clean-up, finding existing files, write errors."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from download_db.files import store
from download_db.files.layout import image_relpath, prefix_dirs

GID = 1234567890
DATA = b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9"


def _commit(root: Path, w: store.Written) -> None:
    """What the writer does once the image's row is committed."""
    store.place(root, w.temp, w.relpath)


def test_write_temp_next_to_final_path(tmp_path):
    w = store.write_temp(tmp_path, GID, 3, "jpg", DATA)
    assert w.relpath == "123/456/1234567890-03.jpg" == image_relpath(GID, 3, "jpg")
    tmp = Path(w.temp)
    assert tmp.is_absolute()
    assert tmp.parent == (tmp_path / w.relpath).parent  # same directory: rename is atomic
    assert tmp.name.startswith(".1234567890-03.") and tmp.name.endswith(store.PART)
    assert f"{os.getpid()}-{threading.get_ident()}" in tmp.name
    assert tmp.read_bytes() == DATA
    assert w.size == len(DATA)
    assert w.sha256 == hashlib.sha256(DATA).hexdigest()
    assert not (tmp_path / w.relpath).exists()  # nothing final before the commit


def test_temp_names_differ_per_thread(tmp_path):
    names = []

    def write():
        names.append(store.temp_path(tmp_path, GID, 1).name)

    t = threading.Thread(target=write)
    t.start()
    t.join()
    write()
    assert len(set(names)) == 2


def test_short_gbif_ids_use_padded_prefix(tmp_path):
    assert prefix_dirs(42) == ("42", "000")
    w = store.write_temp(tmp_path, 42, 0, "png", b"x")
    assert w.relpath == "42/000/42-00.png"
    assert Path(w.temp).parent == tmp_path / "42" / "000"


def test_place_renames_the_temp_to_its_final_name(tmp_path):
    w = store.write_temp(tmp_path, GID, 1, "jpg", DATA)
    store.place(tmp_path, w.temp, w.relpath)
    final = tmp_path / w.relpath
    assert final.read_bytes() == DATA
    assert not Path(w.temp).exists()
    assert store.temp_candidates(tmp_path, GID, 1) == []


def test_place_replaces_an_existing_final(tmp_path):
    first = store.write_temp(tmp_path, GID, 1, "jpg", b"old")
    store.place(tmp_path, first.temp, first.relpath)
    second = store.write_temp(tmp_path, GID, 1, "jpg", b"new")
    store.place(tmp_path, second.temp, second.relpath)
    assert (tmp_path / second.relpath).read_bytes() == b"new"


def _fake_temp(root: Path, gbif_id: int, image_no: int, tag: str) -> Path:
    p1, p2 = prefix_dirs(gbif_id)
    p = root / p1 / p2 / f".{gbif_id}-{image_no:02d}.{tag}{store.PART}"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"partial")
    return p


def test_temp_candidates_finds_every_process_temp_of_one_image(tmp_path):
    own = Path(store.write_temp(tmp_path, GID, 1, "jpg", DATA).temp)
    other_process = _fake_temp(tmp_path, GID, 1, "99999-12345")
    unrelated = [
        _fake_temp(tmp_path, GID, 2, "1-1"),  # another image of the same gbifID
        _fake_temp(tmp_path, GID, 10, "1-1"),  # image 10, not 1
        _fake_temp(tmp_path, 12345678901, 1, "1-1"),  # a longer ID in the same prefix dirs
    ]
    final = tmp_path / image_relpath(GID, 1, "jpg")
    final.write_bytes(DATA)  # a final file is never a temp
    found = sorted(store.temp_candidates(tmp_path, GID, 1))
    assert found == sorted([str(own), str(other_process)])
    assert all(p.exists() for p in unrelated)


def test_clean_temps_removes_only_that_images_temps(tmp_path):
    store.write_temp(tmp_path, GID, 1, "jpg", DATA)
    _fake_temp(tmp_path, GID, 1, "777-888")
    keep = [_fake_temp(tmp_path, GID, 2, "1-1"), _fake_temp(tmp_path, 1234567891, 1, "1-1")]
    final = tmp_path / image_relpath(GID, 1, "jpg")
    final.write_bytes(DATA)
    assert store.clean_temps(tmp_path, GID, 1) == 2
    assert store.temp_candidates(tmp_path, GID, 1) == []
    assert all(p.exists() for p in keep)
    assert final.read_bytes() == DATA
    assert store.clean_temps(tmp_path, GID, 1) == 0
    assert store.clean_temps(tmp_path, 999, 0) == 0  # no directory at all


def test_glob_characters_in_root_are_literal(tmp_path):
    root = tmp_path / "imgs[1]*?"
    w = store.write_temp(root, GID, 1, "jpg", DATA)
    assert store.temp_candidates(root, GID, 1) == [w.temp]
    store.place(root, w.temp, w.relpath)
    assert store.existing_final(root, GID, 1, None) == root / w.relpath
    assert store.existing_final(root, GID, 1, "jpg") == root / w.relpath


def test_existing_final_with_extension(tmp_path):
    assert store.existing_final(tmp_path, GID, 1, "jpg") is None
    _commit(tmp_path, store.write_temp(tmp_path, GID, 1, "png", DATA))
    assert store.existing_final(tmp_path, GID, 1, "jpg") is None  # other extension
    assert store.existing_final(tmp_path, GID, 1, "png") == tmp_path / image_relpath(GID, 1, "png")
    (tmp_path / image_relpath(GID, 2, "jpg")).mkdir()  # a directory is not a file
    assert store.existing_final(tmp_path, GID, 2, "jpg") is None


def test_existing_final_any_extension(tmp_path):
    assert store.existing_final(tmp_path, GID, 1, None) is None
    store.write_temp(tmp_path, GID, 1, "dng", DATA)  # only a temp: not final
    assert store.existing_final(tmp_path, GID, 1, None) is None
    _fake_temp(tmp_path, GID, 10, "1-1")
    _commit(tmp_path, store.write_temp(tmp_path, GID, 10, "jpg", DATA))
    assert store.existing_final(tmp_path, GID, 1, None) is None  # image 10 is not image 1
    _commit(tmp_path, store.write_temp(tmp_path, GID, 1, "dng", DATA))
    assert store.existing_final(tmp_path, GID, 1, None) == tmp_path / image_relpath(GID, 1, "dng")


def test_discard_ignores_missing_files(tmp_path):
    p = tmp_path / "x.part"
    p.write_bytes(b"1")
    store.discard(str(p))
    assert not p.exists()
    store.discard(str(p))  # no error the second time


# -- unwritable root ------------------------------------------------------------------------
# Tests may run as root, where chmod does not stop writes; a FILE where a directory must
# be created fails for everyone.


def test_store_error_when_root_is_a_file(tmp_path):
    root = tmp_path / "images"
    root.write_bytes(b"not a directory")
    with pytest.raises(store.StoreError) as e:
        store.write_temp(root, GID, 1, "jpg", DATA)
    assert str(root) in str(e.value)
    assert root.read_bytes() == b"not a directory"


def test_store_error_when_prefix_dir_is_a_file(tmp_path):
    p1, p2 = prefix_dirs(GID)
    (tmp_path / p1).mkdir()
    (tmp_path / p1 / p2).write_bytes(b"")
    with pytest.raises(store.StoreError):
        store.write_temp(tmp_path, GID, 1, "jpg", DATA)
    # another gbifID elsewhere in the tree is still fine
    w = store.write_temp(tmp_path, 987654321, 1, "jpg", DATA)
    assert Path(w.temp).exists()


def test_store_error_when_temp_name_is_a_directory(tmp_path):
    """open() fails after mkdir succeeded; nothing is left behind and the error is a StoreError."""
    tmp = store.temp_path(tmp_path, GID, 1)
    tmp.mkdir(parents=True)
    with pytest.raises(store.StoreError):
        store.write_temp(tmp_path, GID, 1, "jpg", DATA)
    assert tmp.is_dir()  # the unlink attempt did not remove someone else's directory


def test_store_error_when_directory_not_writable(tmp_path):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        if os.access(root, os.W_OK):
            pytest.skip("running as root: directory permissions are not enforced")
        with pytest.raises(store.StoreError):
            store.write_temp(root, GID, 1, "jpg", DATA)
    finally:
        root.chmod(0o700)
