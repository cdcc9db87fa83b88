"""What every resource shares: the transport it sends through and typed parsing of the answers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from client_sdk._http import HTTPCore
from client_sdk.errors import APIResponseValidationError
from client_sdk.pagination import SyncCursorPage, bind_fetch

M = TypeVar("M", bound=BaseModel)
Params = list[tuple[str, str | int]]


def parse_response(response: httpx.Response, model: type[M]) -> M:
    """Return the response's JSON body as ``model``; an ``APIResponseValidationError`` when the
    body is not JSON or not that object."""
    try:
        body = response.json()
    except ValueError:
        raise APIResponseValidationError(
            f"expected a JSON {model.__name__} from {response.request.url.path}, got {response.text[:200]!r}",
            response=response,
            body=response.text,
        ) from None
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise APIResponseValidationError(
            f"the server's {model.__name__} is malformed: {exc}", response=response, body=body
        ) from None


def page_params(after: str | None, limit: int | None, extra: Sequence[tuple[str, str | int]] = ()) -> Params:
    """The query of a paged list: ``after`` and ``limit`` when given, then ``extra``."""
    params: Params = []
    if after is not None:
        params.append(("after", after))
    if limit is not None:
        params.append(("limit", limit))
    params.extend(extra)
    return params


class SyncAPIResource:
    """A group of endpoints (``client.files``, ``client.fine_tuning.jobs`` ...) over one client's
    transport; it holds no state of its own."""

    def __init__(self, client: HTTPCore) -> None:
        self._client = client

    def _request(self, method: str, path: str, cast: type[M], **kwargs: Any) -> M:
        return parse_response(self._client.request(method, path, **kwargs), cast)

    def _page(
        self,
        path: str,
        item: type[M],
        params: Params,
        fetch: Callable[[str], SyncCursorPage[M]],
    ) -> SyncCursorPage[M]:
        page = self._request("GET", path, SyncCursorPage[item], params=params)  # type: ignore[valid-type]
        return bind_fetch(page, fetch)
