"""Renews a job's lease from a background thread while the worker cannot (model setup, checkpoint load).

Building the top model and loading a checkpoint can take longer than the lease; without renewal the
reaper would hand the job to another worker mid-setup. :class:`LeaseKeeper` heartbeats every
``every_s`` seconds from the moment it starts until the block ends; the serve loop then renews the
lease itself. A lost lease is remembered and raised by :meth:`LeaseKeeper.raise_if_lost`; an
infrastructure error is logged and retried at the next beat.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from service.db import repo

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Context manager: heartbeats ``job_id``'s lease for ``worker_id`` while the block runs."""

    def __init__(self, sessionmaker: Any, job_id: str, worker_id: str, lease_s: float, every_s: float):
        self.sessionmaker, self.job_id, self.worker_id = sessionmaker, job_id, worker_id
        self.lease_s, self.every_s = float(lease_s), float(every_s)
        self.beats = 0
        self.renewed_at: float | None = None  # time.monotonic() of the last successful renewal
        self.lost: repo.LeaseLost | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                with self.sessionmaker.begin() as session:
                    repo.heartbeat(session, self.job_id, self.worker_id, self.lease_s)
            except repo.LeaseLost as lost:
                self.lost = lost
                return
            except Exception:  # an outage: the next beat tries again; the lease may still hold
                log.warning("job %s: lease renewal during setup failed", self.job_id, exc_info=True)
                continue
            self.beats += 1
            self.renewed_at = time.monotonic()

    def raise_if_lost(self) -> None:
        """Raise the :class:`repo.LeaseLost` a renewal met, if any."""
        if self.lost is not None:
            raise self.lost
