"""Evaluation of the PrivTune service: the paper's attacks (``evaluation.attacks``), the experiment
harness, sweeps and reports. Depends on ``client_sdk`` (and the worker for in-process training);
nothing in the service depends on it. Submodules are imported explicitly (no import-time work here).

``config`` (``ExperimentConfig``) and ``rows`` (``ResultRow``) are the contract between the
``harness`` (one experiment), the ``sweep`` (grids into a resumable JSONL store) and the ``report``
(``docs/RESULTS.md``); ``data`` loads the datasets; ``cli`` is ``privtune eval``.
"""
