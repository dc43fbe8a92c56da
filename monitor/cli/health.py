"""The health of the dispatch loop: the probes of `posmon dispatch` (`/healthz`, `/readyz`,
objects the HTTP thread asks) and the watch over the loop's thread in `posmon run`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from monitor.paging.dispatcher import Dispatcher
from monitor.streaming.client import PublishInterrupted

log = logging.getLogger("posmon.dispatch")


class DispatchProbes:
    """Healthy while the dispatch loop keeps turning; ready once it has turned at least once.

    `clock` must be the clock the loop stamps `Dispatcher.last_turn` with (`run_dispatch`'s
    `now`, the wall clock). Until `started` hands it the dispatcher, the process is starting:
    healthy (it is connecting and restoring the ledger) but not ready.
    """

    def __init__(self, stall_after: float, *, clock: Callable[[], float] = time.time) -> None:
        self.stall_after = stall_after
        self._clock = clock
        self._dispatcher: Dispatcher | None = None

    def started(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    def health(self) -> tuple[bool, str]:
        if self._dispatcher is None:
            return True, "starting"
        turned = self._dispatcher.last_turn
        if turned is None:
            return False, "the loop has not turned yet"
        idle = self._clock() - turned
        return idle <= self.stall_after, f"the loop turned {idle:.0f} s ago"

    def ready(self) -> tuple[bool, str]:
        ok = self._dispatcher is not None and self._dispatcher.last_turn is not None
        return ok, "ready" if ok else "not ready: starting"


class DispatchThread:
    """The dispatch loop of `posmon run`, in a thread beside the scoring loop.

    It must run as long as the process does. If it ends before `stop` is set (it raised: the
    broker, a channel, a bug), the reason is logged, `failure` says it, and `stop` is set: the
    scoring loop finishes its batch and commits, and the process exits non-zero, so that it is
    restarted instead of raising alerts that nobody is paged for while it looks healthy."""

    def __init__(
        self, loop: Callable[[], object], stop: threading.Event, what: str = "dispatch"
    ) -> None:
        """`what`: the loop's name in the log (`posmon run` also runs its card stage so)."""
        self._loop = loop
        self._stop = stop
        self._what = what
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"posmon-{what}")

    def start(self) -> DispatchThread:
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # any death of the loop is reported the same way
            if isinstance(exc, PublishInterrupted) and self._stop.is_set():
                log.info(
                    "the %s loop stopped in a broker outage; its batch is read again", self._what
                )
            else:
                self.failure = f"{type(exc).__name__}: {exc}"
                log.exception("the %s loop died: %s; stopping posmon", self._what, self.failure)
        else:
            if not self._stop.is_set():
                self.failure = "it returned before posmon was asked to stop"
                log.error("the %s loop ended: %s; stopping posmon", self._what, self.failure)
        if self.failure is not None:
            self._stop.set()
