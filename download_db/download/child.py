"""One --processes copy: runs the download stage with the config the first process pickles."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

from ..config import DownloadConfig

PROG = "image_install_db.py (--processes copy)"


def start(cfg: DownloadConfig, env: dict[str, str]) -> subprocess.Popen:
    """Start a copy that runs cfg. The config travels as a pickle on the copy's stdin:
    our own object from our own process, never data from elsewhere."""
    # the copy imports this very package even when it is not installed (a script run
    # from another directory)
    root = str(Path(__file__).resolve().parents[2])
    env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, env=env)
    assert proc.stdin is not None  # stdin=PIPE
    with proc.stdin:
        proc.stdin.write(pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL))
    return proc


def main() -> int:
    from ..cli.common import guard  # the copy reports errors like the command it serves
    from .stage import run_download

    cfg = pickle.loads(sys.stdin.buffer.read())
    if not isinstance(cfg, DownloadConfig):
        print(f"{PROG}: error: expected a DownloadConfig on stdin", file=sys.stderr)
        return 64
    def run() -> int:
        run_download(cfg)
        return 0

    return guard(PROG, run, False)


if __name__ == "__main__":
    raise SystemExit(main())
