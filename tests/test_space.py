"""Disk space and the image root: --min-free checked before the first write and during a run
(a stubbed free-space probe), and an image root that is a file, cannot be made, or is read-only."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from download_db.cli.main import download_main
from download_db.download.stage import run_download
from download_db.errors import StorageError
from download_db.files import space
from tests.helpers import Webhook, config, make_db, q
from tests.imageserver import ImageServer

GB = 10**9


@pytest.fixture(scope="module")
def srv():
    with ImageServer("127.0.0.56") as s:
        yield s


def urls(srv: ImageServer, n: int, tag: str) -> list[str]:
    return [srv.url(f"/img/{tag}{i}.jpg?w=64&h=64") for i in range(n)]


def test_the_default_floor_is_the_larger_of_5_percent_and_10_gb() -> None:
    assert space.min_free_for(100 * GB, None) == 10 * GB
    assert space.min_free_for(1000 * GB, None) == 50 * GB
    assert space.min_free_for(1000 * GB, 3 * GB) == 3 * GB


def test_low_space_names_the_place_and_the_flag(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(space, "disk_usage", lambda p: (2 * GB, 1000 * GB))
    line = space.low_space({"under the image root": tmp_path}, None)
    assert line is not None and line.startswith(f"low disk space under the image root "
                                                 f"({tmp_path}): 2.0 GB free, below "
                                                 "--min-free 50.0 GB")
    assert space.low_space({"x": tmp_path}, 1 * GB) is None
    assert space.low_space({"x": tmp_path}, 0) is None  # 0: no check


def test_a_full_disk_at_start_writes_nothing(monkeypatch, tmp_path, srv) -> None:
    db = make_db(tmp_path, urls(srv, 3, "start"))
    seen: list[Path] = []

    def usage(path: Path) -> tuple[int, int]:
        seen.append(Path(path))
        return (1 * GB, 100 * GB)

    monkeypatch.setattr(space, "disk_usage", usage)
    with pytest.raises(StorageError, match="low disk space under the image root"):
        run_download(config(tmp_path, db))
    assert not any((tmp_path / "images").rglob("*.jpg"))
    assert q(db, "SELECT count(*) FROM runs WHERE stage = 'download'") == [(0,)]
    assert q(db, "SELECT DISTINCT status FROM images") == [("pending",)]
    monkeypatch.setattr(space, "disk_usage", lambda p: (50 * GB, 100 * GB) if
                        Path(p) == (tmp_path / "images").resolve() else (1 * GB, 100 * GB))
    with pytest.raises(StorageError, match="low disk space beside the database"):
        run_download(config(tmp_path, db))


def test_the_disk_filling_up_during_a_run_stops_it_cleanly_with_a_notice(
        monkeypatch, tmp_path, srv) -> None:
    # one thread, 0.1 s an image: the main thread's checks see the count climb
    db = make_db(tmp_path, [srv.url(f"/slow/fill{i}.jpg?delay=0.1&w=64&h=64")
                            for i in range(40)])
    calls = {"n": 0}

    def usage(path: Path) -> tuple[int, int]:
        calls["n"] += 1
        return (50 * GB if calls["n"] <= 4 else 1 * GB, 100 * GB)  # start + 1 check fine

    monkeypatch.setattr(space, "disk_usage", usage)
    monkeypatch.setattr(space, "CHECK_EVERY", 5)
    hook = Webhook()
    try:
        cfg = config(tmp_path, db, threads=1, per_host_rate=0,
                     slack_webhook_url=hook.url)
        with pytest.raises(StorageError, match="low disk space") as e:
            run_download(cfg, io.StringIO())
        texts = hook.wait_for(2)
    finally:
        hook.close()
    assert e.value.exit_code == 73
    assert any("failed: StorageError: low disk space" in t for t in texts), texts
    saved, left = (q(db, "SELECT count(*) FROM images WHERE status = ?", (s,))[0][0]
                   for s in ("success", "pending"))
    assert 10 <= saved < 40 and saved + left == 40
    assert q(db, "SELECT count(*) FROM images WHERE claimed_by IS NOT NULL") == [(0,)]
    assert len(list((tmp_path / "images").rglob("*.jpg"))) == saved


def test_the_cli_exits_73_with_one_line(monkeypatch, tmp_path, srv, capsys) -> None:
    db = make_db(tmp_path, urls(srv, 2, "cli"))
    monkeypatch.setattr(space, "disk_usage", lambda p: (1 * GB, 100 * GB))
    args = ["--db", str(db), "--install-path", str(tmp_path / "images"), "--lock-dir",
            str(tmp_path / "locks"), "--no-bar", "--shard", "none", "--contact", "t@example.org"]
    capsys.readouterr()
    assert download_main(args) == 73
    err = capsys.readouterr().err.strip().splitlines()
    assert "error: low disk space under the image root" in err[-1]
    assert download_main([*args, "--min-free", "500M"]) == 0


@pytest.mark.parametrize(("make", "says"), [
    (lambda t: (t / "root").write_text("x") and t / "root", "is a file, not a directory"),
    (lambda t: (t / "f").write_text("x") and t / "f" / "root", "cannot create it"),
    (lambda t: Path("/proc/self"), "cannot be written"),  # procfs: not even root writes there
])
def test_an_unusable_image_root_is_refused_at_start_naming_the_flag(tmp_path, srv, make,
                                                                    says) -> None:
    db = make_db(tmp_path, urls(srv, 1, "root"))
    root = make(tmp_path)
    with pytest.raises(StorageError) as e:
        run_download(config(tmp_path, db, install_path=root))
    assert str(e.value).startswith(f"--install-path {root.resolve()}")
    assert says in str(e.value)
    assert q(db, "SELECT status, attempts FROM images") == [("pending", 0)]
