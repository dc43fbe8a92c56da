"""The probes of `posmon dispatch` (`/healthz`, `/readyz`): objects the HTTP thread asks."""

from __future__ import annotations

import time
from collections.abc import Callable

from monitor.paging.dispatcher import Dispatcher


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
