"""The proxy's FastAPI app: OpenAI's models, chat completions and completions routes around one model
object (see :mod:`privtune.proxy` for what each option does)."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from privtune.proxy.errors import ProxyError, from_model_error, install, invalid, model_not_found
from privtune.proxy.schemas import ChatRequest, CompletionRequest

_END = object()  # the end of a stream of pieces


@dataclass
class _Job:
    """One call of the model: its input, its options and how to name its parameters in errors."""

    input: str | list[dict[str, str]]  # a prompt, a chat, or (classification) the text to label
    text: str  # what the prompt's tokens are counted on when the model reports no usage
    options: dict[str, Any]
    renames: dict[str, str]


@dataclass
class _Shape:
    """The objects of one response: ``chat.completion`` (+ ``.chunk``) or ``text_completion``."""

    chat: bool
    model: str
    include_usage: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))

    def _object(self, choices: list[dict[str, Any]], stream: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if stream else "chat.completion") if self.chat else "text_completion"
        prefix = "chatcmpl-" if self.chat else "cmpl-"
        out = {"id": prefix + self.id, "object": kind, "created": self.created, "model": self.model}
        return {**out, "system_fingerprint": None, "choices": choices}

    def _choice(self, text: str | None, finish: str | None, stream: bool, role: bool = False) -> dict[str, Any]:
        if not self.chat:
            body: dict[str, Any] = {"text": text or ""}
        elif stream:
            body = {"delta": {**({"role": "assistant"} if role else {}), **({} if text is None else {"content": text})}}
        else:
            body = {"message": {"role": "assistant", "content": text, "refusal": None}}
        return {"index": 0, **body, "logprobs": None, "finish_reason": finish}

    def whole(self, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._object([self._choice(text, finish, False)], False), "usage": usage}

    def event(self, text: str | None = None, finish: str | None = None, role: bool = False) -> str:
        chunk = self._object([self._choice(text, finish, True, role)], True)
        return _sse(chunk | ({"usage": None} if self.include_usage else {}))

    def usage_event(self, usage: dict[str, int]) -> str:
        return _sse(self._object([], True) | {"usage": usage})


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _count(tokenizer: Any, text: str) -> int:
    if tokenizer is not None:
        try:
            return len(tokenizer.encode(text, add_special_tokens=False))
        except Exception:  # a tokenizer without that signature: fall back to words
            pass
    return len(text.split())


def _usage(model: Any, job: _Job, completion: str) -> dict[str, int]:
    """The model's ``last_usage`` when it reports one, else tokens counted with its tokenizer."""
    got = getattr(model, "last_usage", None) or {}
    prompt, done = got.get("prompt_tokens"), got.get("completion_tokens")
    if not (isinstance(prompt, int) and isinstance(done, int) and prompt + done > 0):
        tokenizer = getattr(model, "tokenizer", None)
        prompt, done = _count(tokenizer, job.text), _count(tokenizer, completion)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def _finish(model: Any) -> str:
    return "stop" if model.task == "classification" else getattr(model, "last_finish_reason", None) or "stop"


class _EventStream(StreamingResponse):
    """Server-sent events that close their source however the response ends (even unsent)."""

    def __init__(self, head: str, events: Any) -> None:
        async def body() -> AsyncIterator[str]:
            yield head
            async for event in events:
                yield event

        super().__init__(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._events.aclose()


class _Served:
    """The one model, its calls serialised by a lock and run in worker threads (the loop stays free).
    An asyncio lock, not anyio's: a stream takes it in the request's task and may release it in the
    response's."""

    def __init__(self, model: Any) -> None:
        self.model, self.lock = model, asyncio.Lock()

    def check(self, requested: str) -> None:
        if requested != self.model.id:
            raise model_not_found(requested)

    def _start(self, job: _Job, stream: bool) -> Iterator[str] | str:
        if self.model.task == "classification":
            label = self.model.predict([job.input])[0]
            return iter([label]) if stream else label
        return self.model.generate(job.input, **job.options, stream=stream)

    async def _run(self, fn: Callable[[], Any], job: _Job) -> Any:
        try:
            return await anyio.to_thread.run_sync(fn)
        except Exception as exc:
            raise from_model_error(exc, job.renames) from exc

    async def answer(self, job: _Job, shape: _Shape) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            text = self._start(job, False)
            return shape.whole(text, _finish(self.model), _usage(self.model, job, text))

        async with self.lock:
            return await self._run(call, job)

    async def events(self, job: _Job, shape: _Shape) -> AsyncIterator[str]:
        """The stream's events; the first is yielded only once the model has produced its first piece
        (or failed: then this raises a :class:`ProxyError` before any byte is sent)."""
        async with self.lock:
            pieces: Any = None
            started, sent = False, []
            try:
                pieces = await self._run(lambda: self._start(job, True), job)
                piece = await self._run(lambda: next(pieces, _END), job)
                started = True
                yield shape.event("", role=True) if shape.chat else ""
                while piece is not _END:
                    sent.append(piece)
                    yield shape.event(piece)
                    piece = await self._run(lambda: next(pieces, _END), job)
                yield shape.event(None if shape.chat else "", _finish(self.model))
                if shape.include_usage:
                    yield shape.usage_event(_usage(self.model, job, "".join(sent)))
                yield "data: [DONE]\n\n"
            except ProxyError as exc:
                if not started:
                    raise
                yield _sse(exc.body())  # mid-stream: the openai client raises APIError on an error event
            finally:
                close = getattr(pieces, "close", None)
                if close is not None:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(close)


def _sampling(body: ChatRequest | CompletionRequest) -> tuple[dict[str, Any], str]:
    limit, name = body.token_limit()
    options = {"temperature": body.temperature, "top_p": body.top_p, "stop": body.stops(), "seed": body.seed}
    return options | ({"max_new_tokens": limit} if limit is not None else {}), name


GENERATION_OPTIONS = ("max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed")


def _classification_options(body: ChatRequest | CompletionRequest) -> None:
    """A classification model answers with a label: a generation option the caller set is a 400."""
    for name in GENERATION_OPTIONS:
        if name in body.model_fields_set and getattr(body, name, None) is not None:
            raise invalid(f"'{name}' does not apply to a classification model (it answers with a label).", name)


def _chat_job(body: ChatRequest, task: str) -> _Job:
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    options, name = _sampling(body)
    renames = {"max_new_tokens": name, "prompt_or_messages": "messages", "prompt": "messages", "texts": "messages"}
    if task != "classification":
        return _Job(messages, "\n".join(m["content"] for m in messages), options, renames)
    _classification_options(body)
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users:
        raise invalid("A classification model labels the last user message, and there is none.", "messages")
    return _Job(users[-1], users[-1], {}, renames)


def _completion_job(body: CompletionRequest, task: str) -> _Job:
    options, name = _sampling(body)
    renames = {"max_new_tokens": name, "prompt_or_messages": "prompt", "texts": "prompt"}
    if task == "classification":
        _classification_options(body)
    return _Job(body.text(), body.text(), options if task != "classification" else {}, renames)


class _RequestId:
    """Pure ASGI middleware: an ``x-request-id`` on every response (streams untouched)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", f"req_{uuid.uuid4().hex}".encode()),
                ]
            await send(message)

        await self.app(scope, receive, with_id if scope["type"] == "http" else send)


def create_app(model: Any, *, api_key: str | None = None) -> FastAPI:
    """An OpenAI-compatible app serving ``model`` (a ``client_sdk.FineTunedModel`` or any object with its
    interface) under ``/v1``; with ``api_key``, every request must carry ``Authorization: Bearer <api_key>``."""
    served = _Served(model)

    async def authorize(request: Request) -> None:
        given = request.headers.get("authorization", "")
        if api_key is not None and not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ProxyError(
                401, "Incorrect API key provided for this proxy.", type="invalid_request_error", code="invalid_api_key"
            )

    app = FastAPI(title="privtune proxy", dependencies=[Depends(authorize)], docs_url=None, redoc_url=None)
    app.add_middleware(_RequestId)
    install(app)
    owner = model.id.split(":")[2] if model.id.startswith("ft:") and model.id.count(":") >= 2 else "privtune"
    card = {"id": model.id, "object": "model", "created": int(model.created), "owned_by": owner}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        served.check(model_id)
        return card

    async def respond(job: _Job, shape: _Shape, stream: bool) -> Any:
        if not stream:
            return await served.answer(job, shape)
        events = served.events(job, shape)
        return _EventStream(await events.__anext__(), events)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest) -> Any:
        served.check(body.model)
        body.check()
        shape = _Shape(True, model.id, body.include_usage())
        return await respond(_chat_job(body, model.task), shape, body.stream)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        served.check(body.model)
        body.check()
        shape = _Shape(False, model.id, body.include_usage())
        return await respond(_completion_job(body, model.task), shape, body.stream)

    return app
