"""Evaluation of the PrivTune service: the paper's attacks (``evaluation.attacks``), the experiment
harness, sweeps and reports. Depends on ``client_sdk`` (and the worker for in-process training);
nothing in the service depends on it. Submodules are imported explicitly (no import-time work here).
"""
