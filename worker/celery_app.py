"""The worker's Celery application: ``celery -A worker.celery_app worker -Q gpu,artifacts -P solo``.

Celery's command line needs a module-level app; it is configured from ``PRIVTUNE_*`` settings by the
same function the gateway uses (``service.queue.make_celery``), so queue names, serializers and the
visibility timeouts agree on both sides.
"""

from __future__ import annotations

from service.queue import make_celery
from service.settings import get_settings
from worker import tasks


def create_app(settings=None):
    """A Celery app with the worker's tasks registered."""
    app = make_celery(settings or get_settings())
    tasks.register(app)
    return app


app = create_app()
