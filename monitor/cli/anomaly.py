"""The anomaly model for the commands: which artifact to load (the shipped one by default), the
shadow beside it, and reloads of `posmon run` when an artifact changes or on SIGHUP.

A reload loads and checks the whole artifact first (`scoring.model.load_model`: its arrays'
hash, its feature names and version, its parity vectors) and swaps it in between batches; an
artifact that fails is refused, the running model goes on, and a log line and
`posmon_model_reload_total{outcome}` say why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from monitor.cli.settings import ModelSettings
from monitor.core.durations import us
from monitor.scoring.model import ARRAYS, CARD, Model, ModelError, ModelSlot, load_model

log = logging.getLogger("posmon.model")

# The model shipped with posmon (`make model` rebuilds it), installed with the package.
DEFAULT_MODEL: Final = Path(__file__).resolve().parent.parent / "data" / "model"


class ModelLoadError(Exception):
    """A model named by the settings cannot be used at start: one line, exit 2."""


def model_slot(
    settings: ModelSettings,
    *,
    keep_rows: bool = False,
    timer: Callable[[], float] = time.perf_counter,
) -> ModelSlot | None:
    """The slot of the configured models; None when the model is off and no rows are wanted."""
    if not settings.enabled:
        return ModelSlot(keep_rows=True, timer=timer) if keep_rows else None
    live = _load(settings.path or DEFAULT_MODEL, "model")
    shadow = None if settings.shadow is None else _load(settings.shadow, "shadow model")
    return ModelSlot(
        live=live,
        shadow=shadow,
        timer=timer,
        keep_rows=keep_rows,
        drift_window_us=us(settings.drift_window),
    )


def _load(path: Path, what: str) -> Model:
    try:
        return load_model(path)
    except ModelError as exc:
        raise ModelLoadError(f"cannot use the {what} in {path}: {exc}") from exc


def _signature(directory: Path) -> tuple[int, ...] | None:
    """What changes when an artifact is written again (None: not readable now)."""
    try:
        return tuple(n for name in (CARD, ARRAYS) for n in _stat(directory / name))
    except OSError:
        return None


def _stat(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


class Reloader:
    """Watches the live and shadow artifacts; `check` (between batches) swaps in what changed.

    The files are looked at every `every` seconds of the injected clock, or at once after
    `request` (SIGHUP). A changed artifact that loads is swapped in at once; one that does not is
    refused (counted, logged) only when a second look finds the same files, so an artifact caught
    while it is being written is not refused. After a SIGHUP the first look decides.
    """

    def __init__(
        self,
        slot: ModelSlot,
        settings: ModelSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slot = slot
        self._live = settings.path or DEFAULT_MODEL
        self._shadow = settings.shadow
        self._every = settings.reload_every
        self._clock = clock
        self._last = clock()
        self._requested = threading.Event()
        self._seen = {
            path: _signature(path) for path in (self._live, self._shadow) if path is not None
        }
        self._unsettled: dict[Path, tuple[int, ...]] = {}

    def request(self) -> None:
        """Look at the artifacts at the next check (safe from a signal handler)."""
        self._requested.set()

    def check(self) -> None:
        now = self._clock()
        if not self._requested.is_set() and (self._every <= 0 or now - self._last < self._every):
            return
        forced = self._requested.is_set()
        self._requested.clear()
        self._last = now
        self._try(self._live, live=True, forced=forced)
        if self._shadow is not None:
            self._try(self._shadow, live=False, forced=forced)

    def _try(self, path: Path, *, live: bool, forced: bool) -> None:
        signature = _signature(path)
        current = self.slot.live if live else self.slot.shadow
        if signature is None:
            if forced:  # asked for, and nothing readable there
                self.slot.tally.reloads["refused_unreadable"] += 1
                log.warning("no model to reload in %s; %s goes on", path, _name(current))
            return
        if signature == self._seen.get(path) and not forced:
            return
        try:
            model = load_model(path)
        except ModelError as exc:
            if not forced and self._unsettled.get(path) != signature:
                # Perhaps caught between the writes of its two files: judged at the next look,
                # if the files are still the same then.
                self._unsettled[path] = signature
                log.info("model in %s not loadable yet (%s); looking again", path, exc)
                return
            self._seen[path] = signature
            self._unsettled.pop(path, None)
            self.slot.tally.reloads[exc.outcome] += 1
            log.warning(
                "model in %s refused (%s); %s goes on",
                path,
                exc,
                _name(current),
            )
            return
        self._seen[path] = signature
        self._unsettled.pop(path, None)
        if current is not None and current.version == model.version and not forced:
            return
        if live:
            self.slot.swap(live=model)
        else:
            self.slot.swap(shadow=model)
        self.slot.tally.reloads["loaded"] += 1
        log.info(
            "%s model %s loaded from %s (was %s)",
            "live" if live else "shadow",
            model.version,
            path,
            _name(current),
        )


def _name(model: Model | None) -> str:
    return "no model" if model is None else model.version
