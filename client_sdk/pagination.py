"""Pages of list results, as openai-python's ``pagination.py`` has them.

    page = client.fine_tuning.jobs.list(limit=20)   # one request: the newest 20 jobs
    page.data, page.has_more, page.last_id          # this page only
    for job in page:                                # every job, fetching later pages as needed
        ...
    if page.has_next_page():
        older = page.next_page()                    # the page after page.last_id

``SyncCursorPage`` is a list the gateway pages with ``after`` (jobs, events, checkpoints, files);
``SyncPage`` one it returns whole (models). Both keep list-level fields they do not know.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, PrivateAttr

__all__ = ["SyncCursorPage", "SyncPage"]

T = TypeVar("T", bound=BaseModel)


class SyncPage(BaseModel, Generic[T]):
    """A whole list in one page: ``data`` holds every item; iterating the page yields them."""

    model_config = ConfigDict(extra="allow")

    object: str = "list"
    data: list[T]

    def __iter__(self) -> Iterator[T]:  # type: ignore[override]
        """Yield every item of this page and of all pages after it, fetching them as needed."""
        for page in self.iter_pages():
            yield from page.data

    def has_next_page(self) -> bool:
        """Whether another page follows this one (never, for a list returned whole)."""
        return False

    def next_page(self) -> SyncPage[T]:
        """Fetch and return the next page; a ``RuntimeError`` when :meth:`has_next_page` is False."""
        raise RuntimeError("no next page: check has_next_page() before calling next_page()")

    def iter_pages(self) -> Iterator[SyncPage[T]]:
        """Yield this page and then each following page, fetching one only when it is asked for."""
        page: SyncPage[T] = self
        while True:
            yield page
            if not page.has_next_page():
                return
            page = page.next_page()


class SyncCursorPage(SyncPage[T], Generic[T]):
    """One page of a list paged by cursor, newest first.

    ``has_more`` says whether older items follow; the next page is the one ``after`` the last item's
    id (:attr:`next_after`). Iterating the page walks this page and all later ones lazily, one
    request per page, with the ``limit`` and filters of the call that made this page.
    """

    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None

    _fetch: Callable[[str], SyncCursorPage[T]] | None = PrivateAttr(default=None)

    @property
    def next_after(self) -> str | None:
        """The ``after`` cursor of the next page (the last item's id), or None on the last page."""
        if not self.has_more or not self.data:
            return None
        return getattr(self.data[-1], "id", None)

    def has_next_page(self) -> bool:
        """Whether the gateway has items after this page and this page can fetch them."""
        return self.next_after is not None and self._fetch is not None

    def next_page(self) -> SyncCursorPage[T]:
        """Fetch and return the page after this one (``after=`` the last item's id); a
        ``RuntimeError`` when :meth:`has_next_page` is False."""
        after = self.next_after
        if after is None or self._fetch is None:
            raise RuntimeError("no next page: check has_next_page() before calling next_page()")
        return self._fetch(after)

    def iter_pages(self) -> Iterator[SyncCursorPage[T]]:  # type: ignore[override]
        """Yield this page and then each following page, fetching one only when it is asked for."""
        return super().iter_pages()  # type: ignore[return-value]


def bind_fetch(page: SyncCursorPage[T], fetch: Callable[[str], SyncCursorPage[T]]) -> SyncCursorPage[T]:
    """Give ``page`` the function that fetches the page after a cursor, and return it."""
    page._fetch = fetch
    return page
