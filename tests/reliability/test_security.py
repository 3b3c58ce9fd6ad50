"""Security: nothing outside --install-path is ever written, whatever URLs, headers and
redirects say; and the .env secret (SLACK_WEBHOOK_URL) never reaches logs, output, the
database or any file.
"""

from __future__ import annotations

import http.server
import importlib.util
import os
import re
import socket
import threading
import uuid
from pathlib import Path

import pytest

from tests.helpers import q, row, write_multimedia
from tests.reliability._support import (
    PY,
    ROOT,
    SOAK,
    HostileServer,
    download_cmd,
    init_cmd,
    run,
    temp_files,
    tree,
)

pytestmark = pytest.mark.timeout(120 * SOAK)

PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
              "ALL_PROXY", "no_proxy", "NO_PROXY")
# what a saved file may be called, relative to the image root (README, on-disk layout)
LAYOUT = re.compile(r"\d{1,3}/\d{3}/\d{1,18}-\d{2,}\.(jpg|png|tif|jp2|gif|webp|bmp|dng|cr2|"
                    r"cr3|nef|arw|orf|rw2|raf|pef)")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without proxies or secrets of the machine running the tests."""
    env = {k: v for k, v in os.environ.items()
           if k not in PROXY_VARS and k not in ("SLACK_WEBHOOK_URL", "DOWNLOADER_CONTACT")}
    return {**env, **extra}


def hostile_urls(srv: HostileServer) -> list[str]:
    base = srv.url("")
    return [
        srv.url("/cd/a.jpg?fn=../../../sentinel/pwned.jpg"),
        srv.url("/cd/b.jpg?fn=/tmp/pwned-reliability-abs.jpg"),
        srv.url("/cd/c.jpg?fn=..%2F..%2Fpwned.jpg"),
        srv.url("/cd/c2.jpg?fn=....//....//pwned.jpg"),
        srv.url("/cd/c3.jpg?fn=%00../../pwned.jpg"),
        srv.url("/goto/d?to=/img/../../../../sentinel/pwned.jpg"),
        srv.url("/goto/e?to=file:///etc/passwd"),
        srv.url(f"/goto/f?to={base}/cd/f.jpg%3Ffn%3D../../x.jpg"),
        srv.url("/img/..%2F..%2Fsentinel%2Fg.jpg"),
        srv.url("/img/h.jpg?name=../../../pwned.jpg&w=300"),
        srv.url("/png/i.png?w=300"),  # another extension with --keep-original
        srv.url("/img/../../../../etc/j.jpg"),
    ]


@pytest.mark.parametrize("keep_original", [False, True], ids=["jpeg", "keep-original"])
def test_nothing_is_written_outside_the_install_path(tmp_path, keep_original) -> None:
    work = tmp_path / "work"
    root = work / "root" / "images"
    sentinel = work / "root" / "sentinel"
    for d in (root, sentinel, tmp_path / "outside", work / "db"):
        d.mkdir(parents=True)
    (sentinel / "keep.txt").write_text("sentinel")
    (tmp_path / "outside" / "keep.txt").write_text("outside")
    db, locks = work / "db" / "d.db", tmp_path / "locks"
    with HostileServer("127.0.0.23") as srv:
        urls = hostile_urls(srv)
        # short and long gbifIDs: both prefix layouts
        ids = [42, 7, 1234567890, 999999999999999999] + \
            [2_000_000_000 + i for i in range(len(urls) - 4)]
        mm = write_multimedia(tmp_path / "m.txt", [row(g, u) for g, u in zip(ids, urls,
                                                                              strict=True)])
        assert run(init_cmd(db, "--multimedia", str(mm)), cwd=work).returncode == 0
        skip = [db.parent, locks, root]
        before = tree(tmp_path, skip=skip)
        tmp_before = {p.name for p in Path("/tmp").glob("pwned*")}
        extra = ("--keep-original",) if keep_original else ()
        r = run(download_cmd(db, root, locks, *extra), cwd=work, env=clean_env())
        assert r.returncode == 0, r.stderr
    assert tree(tmp_path, skip=skip) == before, "something was written outside the image root"
    assert {p.name for p in Path("/tmp").glob("pwned*")} == tmp_before
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    assert files and all(LAYOUT.fullmatch(f) for f in files), files
    assert not temp_files(root)
    saved = dict(q(db, "SELECT gbif_id, file_path FROM images WHERE status = 'success'"))
    assert saved[42].startswith("42/000/42-00.")  # names come from the gbifID only
    assert sorted(saved.values()) == sorted(files)


# --------------------------------------------------------------------------- secrets


class _Hook(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _HookHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:  # the path holds the secret
        pass


@pytest.fixture
def webhook():
    httpd = _Hook(("127.0.0.24", 0), _HookHandler)
    httpd.paths = []  # type: ignore[attr-defined]
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True)
    t.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.24", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _all_bytes(top: Path, but: Path) -> list[tuple[str, bytes]]:
    return [(p.as_posix(), p.read_bytes()) for p in top.rglob("*")
            if p.is_file() and p != but]


@pytest.mark.parametrize("hook_state", ["up", "down"])
def test_env_secrets_never_appear_in_output_logs_or_the_database(tmp_path, webhook,
                                                                 hook_state) -> None:
    token = f"xoxSECRET{uuid.uuid4().hex}"
    port = webhook.server_address[1] if hook_state == "up" else _closed_port()
    work = tmp_path / "work"
    (work / "db").mkdir(parents=True)
    env_file = work / ".env"
    env_file.write_text("DOWNLOADER_CONTACT=reliability-tests@example.org\n"
                        f"SLACK_WEBHOOK_URL=http://127.0.0.24:{port}/services/T000/B000/{token}\n")
    db, root, locks = work / "db" / "d.db", work / "images", work / "locks"
    env = clean_env()
    outputs: list[tuple[str, str]] = []

    def go(cmd: list[str], *codes: int) -> None:
        r = run(cmd, cwd=work, env=env)
        outputs.append((" ".join(cmd[1:3]), r.stdout + r.stderr))
        assert r.returncode in (codes or (0,)), r.stderr

    with HostileServer("127.0.0.25") as srv:
        urls = [srv.url("/img/ok.jpg?w=200"), srv.url("/status/404"), srv.url("/html/x"),
                srv.url("/status/500"), srv.url("/trunc/t.jpg"),
                f"http://127.0.0.25:{_closed_port()}/refused.jpg",
                srv.url("/img/s.jpg").replace("http://", "https://")]
        mm = write_multimedia(work / "m.txt", [row(9_000_000_000 + i, u)
                                               for i, u in enumerate(urls)])
        go(init_cmd(db, "--multimedia", str(mm)))
        dl = download_cmd(db, root, locks)
        dl = dl[:dl.index("--contact")] + dl[dl.index("--contact") + 2:]  # contact from .env
        go(dl)
        go(dl + ["--debug", "--max-attempts", "5"])
        go([PY, str(ROOT / "image_install_db.py"), "--help"])
        go([PY, str(ROOT / "image_install_db.py"), "--db", str(work / "missing.db")], 3)
        go(init_cmd(db, "--finalize-only"))
        if (ROOT / "status_report.py").exists():
            for extra in ([], ["--json"], ["--check"]):
                go([PY, str(ROOT / "status_report.py"), "--db", str(db), *extra], 0, 1)
        headers = list(srv.headers_seen)

    for what, text in outputs:
        assert token not in text, f"the webhook secret is printed by {what}"
    for path, data in _all_bytes(tmp_path, but=env_file):
        assert token.encode() not in data, f"the webhook secret is in {path}"
    for target, h in headers:
        assert token not in repr(h) and token not in target, "the secret was sent to a publisher"
    # the .env was really read: the contact is in the User-Agent, and the webhook was used
    assert any("reliability-tests@example.org" in h.get("User-Agent", "") for _t, h in headers)
    if hook_state == "up" and importlib.util.find_spec("download_db.notify") is not None:
        assert any(token in p for p in webhook.paths), "no notification: the test proves little"
