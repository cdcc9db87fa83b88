"""The client's resources, one module per group of endpoints, as in openai-python."""

from __future__ import annotations

from client_sdk.resources.bottoms import Bottoms
from client_sdk.resources.files import Files
from client_sdk.resources.fine_tuning import Checkpoints, FineTuning, Jobs
from client_sdk.resources.models import Models

__all__ = ["Bottoms", "Checkpoints", "Files", "FineTuning", "Jobs", "Models"]
