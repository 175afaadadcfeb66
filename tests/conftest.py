"""The real app, launched once per test session with `python app.py` on a free localhost port.

It runs the embedded model in assets/ (or ARPG_MODEL / ARPG_TOKENIZER when set, as the app reads
them itself), offline (HF_HUB_OFFLINE=1) and single-threaded like a small CPU Space.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
STARTUP_BUDGET_S = 15.0
TIMINGS: dict[str, float] = {}  # printed at the end of the run


def _model_files() -> tuple[str, str]:
    from arpg_core.defaults import default_model_source, default_tokenizer_source

    return default_model_source(), default_tokenizer_source()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serving(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "config", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def app_url():
    model, tokenizer = _model_files()
    missing = [p for p in (model, tokenizer) if not p.startswith("hf://") and not Path(p).is_file()]
    if missing:
        pytest.fail(
            f"the app's model is missing ({', '.join(missing)}); export the embedded model into "
            "assets/ or set ARPG_MODEL / ARPG_TOKENIZER"
        )
    ARTIFACTS.mkdir(exist_ok=True)
    port = _free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    log = open(ARTIFACTS / "app.log", "w")  # noqa: SIM115 - closed at teardown
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        while not _serving(url):
            if process.poll() is not None:
                pytest.fail(f"app.py exited with {process.returncode}:\n{(ARTIFACTS / 'app.log').read_text()[-3000:]}")
            if time.perf_counter() - start > 120:
                pytest.fail("app.py did not serve within 120 s")
            time.sleep(0.1)
        TIMINGS["startup_s"] = time.perf_counter() - start
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("ARPG Studio timings")
        for name, value in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {value:.3f}")
