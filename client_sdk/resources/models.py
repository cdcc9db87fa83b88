"""``client.models``: the models the gateway serves (OpenAI's ``/models``)."""

from __future__ import annotations

from client_sdk._http import path_segment as _seg
from client_sdk.pagination import SyncPage
from client_sdk.resources._base import SyncAPIResource
from client_sdk.types import Model

__all__ = ["Models"]


class Models(SyncAPIResource):
    """``client.models``: base models and the organization's fine-tuned models."""

    def list(self) -> SyncPage[Model]:
        """Return every model the gateway serves, in one page (the list is not paged): read
        ``.data`` or iterate it. A model's ``privtune`` attribute holds the server's limits."""
        return self._request("GET", "models", SyncPage[Model])

    def retrieve(self, model_id: str) -> Model:
        """Return one model by id (a base model name or an ``ft:...`` id); ``NotFoundError`` if unknown."""
        return self._request("GET", f"models/{_seg(model_id)}", Model)
