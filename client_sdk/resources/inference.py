"""``client.inference``: private inference sessions of fine-tuned models (the wire, not text)."""

from __future__ import annotations

from typing import Any

from client_sdk._http import path_segment as _seg
from client_sdk.resources._base import SyncAPIResource

__all__ = ["Inference"]

OCTET = "application/octet-stream"
PATH = "privtune/inference/sessions"


class Inference(SyncAPIResource):
    """Open, use and close inference sessions; :class:`client_sdk.FineTunedModel` is built on them."""

    def open(self, model: str) -> dict[str, Any]:
        """Open a session of ``model`` (``ft:...``); returns ``{"id", "task", "max_context", ...}``."""
        return self._client.request("POST", PATH, json={"model": model}).json()

    def forward(self, session_id: str, payload: bytes) -> bytes:
        """Send one ``infer`` payload (perturbed states) and return the reply payload's bytes. Raises
        ``SessionExpiredError`` when the session is gone."""
        headers = {"Content-Type": OCTET, "Accept": OCTET}
        return self._client.request("POST", f"{PATH}/{_seg(session_id)}/forward", content=payload, headers=headers).content

    def close(self, session_id: str) -> None:
        self._client.request("DELETE", f"{PATH}/{_seg(session_id)}")
