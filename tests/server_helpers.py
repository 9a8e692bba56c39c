"""A real ``chargen serve`` for tests: uvicorn on 127.0.0.1 in a thread of the test process, over
two tiny runs (text and tunes) trained once per session."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.abc_fixtures import train_tiny_abc
from tests.cli_helpers import TINY, run
from tests.conftest import VERSE


def train_runs(folder: Path, hidden: int = 24) -> Path:
    """A checkpoint directory with a text run ``verse`` (``hidden`` wide: a wide one writes
    slowly enough to watch it stream) and a tune run ``folk``."""
    corpus = folder / "verse.txt"
    corpus.write_text(VERSE * 40, encoding="utf-8")
    runs = folder / "runs"
    wide = [*TINY, "--max-steps", "120", "--hidden", str(hidden)]
    result = run("--checkpoint-dir", runs, "train", corpus, "--name", "verse", *wide)
    assert result.exit_code == 0, result.output
    (folder / "abc").mkdir()
    shutil.copytree(train_tiny_abc(folder / "abc"), runs / "folk")
    return runs


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def live_server(runs: Path, **options) -> Iterator[str]:
    """A running server's base URL; ``options`` go to ``create_app``."""
    import uvicorn

    from chargen import api
    from chargen.server.app import create_app

    models = {name: api.load(runs / name) for name in ("verse", "folk")}
    app = create_app(models, **options)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
