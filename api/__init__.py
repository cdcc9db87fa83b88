"""PrivTune gateway: a torch-free FastAPI service (auth, validation, persistence, step relay).

``api.main.create_app`` builds the app; ``api.db`` (no FastAPI) and ``api.queue`` are shared with
the Celery worker. Nothing in this package imports torch.
"""
