"""JSONL in and out, for `posmon replay` and `posmon simulate` (an edge: files, not Kafka).

An output never harms an input or another output (docs/contract.md, "Commands"): the commands
call `refuse_collisions` before anything is opened for writing, and every regular output file is
written beside its destination under a hidden temporary name and renamed over it only when the
command completes (`AtomicFile`, `atomic_paths`). An interrupted run leaves the previous file
as it was (and at worst a hidden `.NAME.*.tmp` beside it after a SIGKILL).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from monitor.core.alerts import Alert
from monitor.core.events import Rejection

STDIN = "-"


class OutputCollisionError(ValueError):
    """An output path that is an input, or another output; the message is one line."""


def read_messages(path: str) -> Iterator[bytes]:
    """The lines of a JSONL file (`-` for stdin) without line endings.

    A blank line is passed on like any other: it is rejected (`not_json`) and lands in the dead
    letters, because nothing read is dropped silently.
    """
    stream: IO[bytes] = sys.stdin.buffer if path == STDIN else open(path, "rb")  # noqa: SIM115
    try:
        for line in stream:
            yield line.rstrip(b"\r\n")
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _identity(path: str | Path) -> tuple[object, ...]:
    """What makes two names one file: device and inode when it exists (through symlinks and hard
    links alike), else the path with every symlink resolved."""
    real = os.path.realpath(path)  # what will be written: `AtomicFile` resolves it too
    try:
        st = os.stat(real)
    except OSError:  # not there yet (or unreadable: opening it will say why)
        return ("path", real)
    return ("inode", st.st_dev, st.st_ino)


def _stdin_identity() -> tuple[object, ...] | None:
    """The file stdin is redirected from (`< events.jsonl`); None for a pipe or a terminal."""
    try:
        st = os.fstat(sys.stdin.fileno())
    except (OSError, ValueError):  # no stdin, or one that is no file descriptor
        return None
    return ("inode", st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def refuse_collisions(inputs: Mapping[str, str | Path], outputs: Mapping[str, Path]) -> None:
    """Raise `OutputCollisionError` when an output is one of the inputs or another output.

    Keys name the paths in the message (`--alerts`, `the input`). Writing `/dev/null` twice is
    harmless and allowed; everything else is compared by identity (`_identity`).
    """
    read: dict[tuple[object, ...], str] = {}
    for name, path in inputs.items():
        identity = _stdin_identity() if path == STDIN else _identity(path)
        if identity is not None:
            read.setdefault(identity, name)
    written: dict[tuple[object, ...], str] = {}
    for name, path in outputs.items():
        if os.path.realpath(path) == os.devnull:
            continue
        identity = _identity(path)
        if identity in read:
            other = read[identity]
            raise OutputCollisionError(
                f"{name} {path} is {other} ({inputs[other]}): refusing to overwrite what is read;"
                f" give {name} another path"
            )
        if identity in written:
            other = written[identity]
            raise OutputCollisionError(
                f"{name} {path} is the same file as {other} ({outputs[other]}):"
                " give each output its own path"
            )
        written[identity] = name


def _regular_or_new(path: Path) -> bool:
    """True for a path a rename can replace: a regular file, or nothing yet. A device or a pipe
    (`/dev/null`, `/dev/stdout`) is written in place."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new hidden file in `path`'s directory (same file system, so the rename is atomic),
    with the permissions of the file it will replace, or else those an ordinary
    `open(..., "w")` gives (0666 less the umask). An error names `path`, not the temporary."""
    while True:
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        with suppress(FileNotFoundError):
            os.fchmod(fd, stat.S_IMODE(os.stat(path).st_mode))
        return fd, temp


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A text file that replaces `path` only on `commit`; `discard` leaves `path` untouched.

    A symlink at `path` keeps pointing where it did: its target is what gets replaced. A device
    or a pipe is written in place (there is nothing to replace).
    """

    def __init__(self, path: Path) -> None:
        self._temp: Path | None = None
        if _regular_or_new(path):
            self.path = Path(os.path.realpath(path))
            fd, self._temp = _create_beside(self.path)
            self.file: IO[str] = os.fdopen(fd, "w", encoding="utf-8")
        else:
            self.path = path
            self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115

    def commit(self) -> None:
        """Flush to disk and put the file in place (the previous one goes at the same instant)."""
        self.file.flush()
        if self._temp is not None:
            os.fsync(self.file.fileno())
        self.file.close()
        if self._temp is not None:
            os.replace(self._temp, self.path)
            _sync_directory(self.path.parent)

    def discard(self) -> None:
        """Drop what was written; the destination stays as it was."""
        self.file.close()
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)


@contextmanager
def atomic_paths(*paths: Path) -> Iterator[list[Path]]:
    """Paths to write instead of `paths`, for a writer that opens files itself (the simulator):
    temporary files beside them, renamed over them when the block ends normally and deleted when
    it raises. A device or a pipe is given as itself."""
    renames: list[tuple[Path, Path]] = []
    given: list[Path] = []
    try:
        for path in paths:
            if not _regular_or_new(path):
                given.append(path)
                continue
            target = Path(os.path.realpath(path))
            fd, temp = _create_beside(target)
            os.close(fd)
            renames.append((temp, target))
            given.append(temp)
        yield given
    except BaseException:
        for temp, _ in renames:
            temp.unlink(missing_ok=True)
        raise
    for temp, target in renames:
        os.replace(temp, target)


class JsonlSink:
    """Writes alerts and dead letters as JSON lines; `publish` returns once they reach the OS.

    The files appear (replacing any earlier ones) on `close`; `abort` leaves them as they were.
    A dead letter's `source` names the line of `input_file` it stands for (a replay), or else
    the partition and offset it was read at, of `topic` when given (a copy of a stream's).
    """

    def __init__(
        self,
        alerts: Path,
        dead_letters: Path | None,
        *,
        input_file: str | None = None,
        topic: str | None = None,
    ) -> None:
        self._files: list[AtomicFile] = []
        try:
            self._alerts = self._open(alerts)
            self._dlq = self._open(dead_letters) if dead_letters else None
        except BaseException:
            self.abort()
            raise
        self._input_file, self._topic = input_file, topic

    def _open(self, path: Path) -> IO[str]:
        atomic = AtomicFile(path)
        self._files.append(atomic)
        return atomic.file

    def publish(
        self,
        alerts: Sequence[Alert],
        dead_letters: Sequence[Rejection],
        handoffs: Sequence[object] = (),
    ) -> None:
        """`handoffs` (a merchant stage's records for the card stage) have no place in files."""
        if alerts:
            self._alerts.writelines(alert.model_dump_json() + "\n" for alert in alerts)
            self._alerts.flush()
        if dead_letters and self._dlq is not None:
            self._dlq.writelines(
                json.dumps(r.as_dead_letter(self._source(r))) + "\n" for r in dead_letters
            )
            self._dlq.flush()

    def _source(self, r: Rejection) -> dict[str, str | int] | None:
        if r.partition is None or r.offset is None:
            return None
        if self._input_file is not None:
            return {"file": self._input_file, "line": r.offset}
        at: dict[str, str | int] = {"partition": r.partition, "offset": r.offset}
        return at if self._topic is None else {"topic": self._topic, **at}

    def close(self) -> None:
        """Put every file in place: the run is complete."""
        for atomic in self._files:
            atomic.commit()
        self._files = []

    def abort(self) -> None:
        """Drop what was written: the destinations keep what they held before."""
        for atomic in self._files:
            atomic.discard()
        self._files = []
