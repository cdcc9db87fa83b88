"""The provider's shared service layer: settings, database, job queue, step relay and the error tree.

Used by the gateway (``api``) and the Celery workers (``worker``); imports neither FastAPI nor torch,
so the gateway stays torch-free and the worker never imports the gateway.
"""
