"""The worker's Celery application: ``celery -A worker.celery_app worker -Q gpu,artifacts -P solo``.

Celery's command line needs a module-level app; it is configured from ``PRIVTUNE_*`` settings by the
same function the gateway uses (``service.queue.make_celery``), so queue names, serializers and the
visibility timeouts agree on both sides.
"""

from __future__ import annotations

import logging

from celery.signals import setup_logging

from service.logging import configure_logging
from service.queue import make_celery
from service.settings import get_settings
from worker import tasks


@setup_logging.connect
def _configure_logging(loglevel=None, **_) -> None:
    """The worker logs like the gateway (``settings.log_format``: JSON lines by default); connecting
    this signal stops Celery from installing its own root handler."""
    configure_logging(get_settings(), level=loglevel or logging.INFO)


def create_app(settings=None):
    """A Celery app with the worker's tasks registered."""
    app = make_celery(settings or get_settings())
    tasks.register(app)
    return app


app = create_app()
