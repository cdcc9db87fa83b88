"""``python -m worker.inference``: run one inference worker (settings from PRIVTUNE_* variables)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import uuid


def main() -> int:
    from sqlalchemy.orm import sessionmaker

    from service.db.session import make_engine
    from service.logging import configure_logging
    from service.redis_client import redis_client
    from service.settings import get_settings
    from worker.inference.loop import InferenceWorker

    settings = get_settings()
    configure_logging(settings, level=logging.INFO)
    from worker.tasks import apply_torch_threads

    apply_torch_threads(settings)
    sessions = sessionmaker(make_engine(settings.database_url), expire_on_commit=False)
    redis = redis_client(settings.redis_url, longest_wait_s=1.0)
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    device = os.environ.get("PRIVTUNE_WORKER_DEVICE") or None
    with contextlib.suppress(KeyboardInterrupt):
        InferenceWorker(settings, sessions, redis, worker_id, device=device).serve_forever(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
