"""PrivTune gateway: a torch-free FastAPI service (auth, validation, persistence, step relay).

``api.main.create_app`` builds the app. It stands on the shared, FastAPI-free service layer
(``service``: settings, database, queue, relay, errors), which the Celery workers use too. Nothing in
this package imports torch or the worker.
"""
