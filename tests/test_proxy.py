"""``privtune proxy``: the official ``openai`` client, unmodified but for its base URL, against the proxy
app served by a real uvicorn server on a loopback port, around a deterministic fake model."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import uvicorn

from client_sdk.errors import NotFoundError as ServiceNotFound
from privtune.proxy import create_app, serve

MODEL = "ft:smollm2-135m:org-1:demo:ftjob-abc123"


class OptionError(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class FakeModel:
    """The ``FineTunedModel`` interface: generation echoes the prompt's (or the last user message's)
    words one piece per word; classification labels texts containing "good" positive."""

    def __init__(self, task: str = "generation", delay: float = 0.0) -> None:
        self.id, self.task, self.created, self.tokenizer = MODEL, task, 1_700_000_000, None
        self.delay, self.calls, self.active, self.most_active, self.closed = delay, [], 0, 0, []

    def _enter(self) -> None:
        self.active += 1
        self.most_active = max(self.most_active, self.active)

    def predict(self, texts: list[str]) -> list[str]:
        self.calls.append(("predict", texts))
        return ["positive" if "good" in text else "negative" for text in texts]

    def generate(self, prompt, *, max_new_tokens=64, temperature=1.0, top_p=1.0, stop=None, stream=False, seed=None):
        self.calls.append(("generate", prompt, dict(max_new_tokens=max_new_tokens, temperature=temperature, stop=stop)))
        if max_new_tokens > 100:
            raise OptionError("max_new_tokens must be in 1..100", "max_new_tokens")
        if not isinstance(prompt, str):
            prompt = [m for m in prompt if m["role"] == "user"][-1]["content"]
        if "missing-model" in prompt:
            request = httpx.Request("POST", "http://service/v1/inference")
            raise ServiceNotFound("no such model", response=httpx.Response(404, request=request), body=None)
        words = prompt.split()
        cut = next((i for i, w in enumerate(words) if w in (stop or [])), None)
        finish = "length" if cut is None and len(words) > max_new_tokens else "stop"
        words = words[: min(max_new_tokens, len(words) if cut is None else cut)]
        pieces = self._pieces([w if i == 0 else " " + w for i, w in enumerate(words)], len(prompt.split()), finish)
        return pieces if stream else "".join(pieces)

    def _pieces(self, pieces: list[str], prompt_tokens: int, finish: str) -> Iterator[str]:
        self._enter()
        try:
            for piece in pieces:
                time.sleep(self.delay)
                if piece.strip() == "explode":
                    raise RuntimeError("the tail crashed")
                yield piece
            self.last_usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces)}
            self.last_finish_reason = finish
        except GeneratorExit:
            self.closed.append(True)
            raise
        finally:
            self.active -= 1


class Served:
    def __init__(self, model: FakeModel, api_key: str | None = None) -> None:
        self.model = model
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        config = uvicorn.Config(create_app(model, api_key=api_key), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def client(self, api_key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def served():
    running: list[Served] = []

    def start(task: str = "generation", delay: float = 0.0, api_key: str | None = None) -> Served:
        running.append(Served(FakeModel(task, delay), api_key))
        return running[-1]

    yield start
    for s in running:
        s.stop()


@pytest.fixture
def client(served):
    return served().client()


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def test_models_list_and_retrieve(client):
    (model,) = client.models.list().data
    assert (model.id, model.object, model.created, model.owned_by) == (MODEL, "model", 1_700_000_000, "org-1")
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("ft:smollm2-135m:org-1:other:ftjob-x")
    assert caught.value.body["code"] == "model_not_found"


def test_chat_completion(served):
    s = served()
    reply = s.client().chat.completions.create(model=MODEL, messages=_chat("hello private world"), temperature=0)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == MODEL
    (choice,) = reply.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant",
        "hello private world",
        "stop",
    )
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (3, 3, 6)
    # developer messages are sent as system; the options reach the model under its names
    s.client().chat.completions.create(
        model=MODEL, messages=[{"role": "developer", "content": "x"}, {"role": "user", "content": "a b"}], stop="b"
    )
    _, messages, options = s.model.calls[-1]
    assert messages[0]["role"] == "system" and options["stop"] == ["b"]


def test_chat_token_limits_and_finish_reason_length(served):
    s = served()
    reply = s.client().chat.completions.create(model=MODEL, messages=_chat("one two three four"), max_tokens=2)
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("one two", "length")
    s.client().chat.completions.create(model=MODEL, messages=_chat("a"), max_tokens=9, max_completion_tokens=5)
    assert s.model.calls[-1][2]["max_new_tokens"] == 5  # max_completion_tokens wins


def test_chat_stream(served):
    s = served()
    stream = s.client().chat.completions.create(
        model=MODEL, messages=_chat("stream these words"), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "stream these words"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])


def test_completions(client):
    done = client.completions.create(model=MODEL, prompt="the quick brown fox")
    assert done.object == "text_completion" and done.id.startswith("cmpl-")
    assert (done.choices[0].text, done.choices[0].finish_reason, done.usage.total_tokens) == (
        "the quick brown fox",
        "stop",
        8,
    )
    pieces = list(client.completions.create(model=MODEL, prompt="a b c d", max_tokens=3, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == "a b c"
    assert pieces[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"n": 2}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 500}, "max_tokens"),  # the model's own check, in the request's words
        ({"max_completion_tokens": 500}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        ({"extra_body": {"seed": "abc"}}, "seed"),
    ],
)
def test_chat_bad_requests_name_their_param(client, options, param):
    options = {"messages": _chat("hi"), **options}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, **options)
    assert caught.value.param == param, caught.value.body
    assert caught.value.type == "invalid_request_error" and caught.value.message


def test_unknown_model_in_the_body_is_404(client):
    for call in (
        lambda: client.chat.completions.create(model="smollm2-135m", messages=_chat("hi")),
        lambda: client.completions.create(model="demo", prompt="hi", stream=True),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert (caught.value.param, caught.value.code) == ("model", "model_not_found")


def test_envelopes_for_what_the_client_cannot_send(served):
    base = served().base_url
    for path, kwargs, status, param in [
        ("/chat/completions", {"json": {"model": MODEL}}, 400, "messages"),
        ("/chat/completions", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, None),
        ("/completions", {"json": {"model": MODEL, "prompt": ["a", "b"]}}, 400, "prompt"),
        ("/completions", {"json": {"model": MODEL, "prompt": "a", "echo": True}}, 400, "echo"),
        ("/nowhere", {"json": {}}, 404, None),
    ]:
        response = httpx.post(base + path, **kwargs)
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert response.json()["error"]["param"] == param
        assert response.headers["x-request-id"].startswith("req_")
    missing = httpx.post(base + "/chat/completions", json={"model": MODEL}).json()["error"]
    assert missing["code"] == "missing_required_parameter" and "'messages'" in missing["message"]


def test_model_errors_keep_their_status_and_never_leak_a_traceback(served):
    client = served().client()
    with pytest.raises(openai.NotFoundError, match="no such model"):
        client.chat.completions.create(model=MODEL, messages=_chat("missing-model"))
    with pytest.raises(openai.InternalServerError) as caught:
        client.completions.create(model=MODEL, prompt="explode")
    assert "Traceback" not in str(caught.value.body) and "RuntimeError" in caught.value.message
    # failing after the stream started: an error event, which the client raises
    with pytest.raises(openai.APIError, match="RuntimeError"):
        list(client.completions.create(model=MODEL, prompt="fine then explode", stream=True))
    assert client.completions.create(model=MODEL, prompt="still serving").choices[0].text == "still serving"


def test_classification_model_answers_with_the_label_of_the_last_user_message(served):
    s = served("classification")
    client = s.client()
    messages = [{"role": "user", "content": "this is bad"}, {"role": "assistant", "content": "negative"}]
    messages.append({"role": "user", "content": [{"type": "text", "text": "a good film"}]})
    reply = client.chat.completions.create(model=MODEL, messages=messages)
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("positive", "stop")
    assert s.model.calls[-1] == ("predict", ["a good film"])
    assert reply.usage.prompt_tokens == 3 and reply.usage.completion_tokens == 1  # words: no tokenizer
    chunks = list(client.chat.completions.create(model=MODEL, messages=_chat("bad"), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "negative"
    assert client.completions.create(model=MODEL, prompt="good").choices[0].text == "positive"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "good"}])
    assert caught.value.param == "messages"
    for option, value in (("max_tokens", 1000), ("temperature", 0.7), ("stop", ["x"]), ("top_p", 0.5)):
        with pytest.raises(openai.BadRequestError) as caught:  # generation options do not apply: 400
            client.chat.completions.create(model=MODEL, messages=messages, **{option: value})
        assert caught.value.param == option and "classification" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="good", max_tokens=5)
    assert caught.value.param == "max_tokens"


def test_a_stream_leaves_the_loop_free_and_calls_are_serialised(served):
    s = served(delay=0.15)
    client = s.client()
    stream = client.chat.completions.create(model=MODEL, messages=_chat("w " * 8), stream=True)
    chunks = iter(stream)
    next(chunks)  # the stream is under way: the model is busy for about a second
    started = time.monotonic()
    assert client.models.list().data[0].id == MODEL
    assert time.monotonic() - started < 0.5
    other: list[str] = []
    worker = threading.Thread(
        target=lambda: other.append(client.completions.create(model=MODEL, prompt="x y").choices[0].text)
    )
    worker.start()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).split() == ["w"] * 8
    worker.join(10)
    assert other == ["x y"] and s.model.most_active == 1


def test_a_client_leaving_mid_stream_closes_the_model_stream(served):
    s = served(delay=0.05)
    client = s.client()
    with client.chat.completions.create(model=MODEL, messages=_chat("z " * 40), stream=True) as stream:
        next(iter(stream))
    assert client.completions.create(model=MODEL, prompt="next").choices[0].text == "next"
    assert s.model.closed == [True] and s.model.active == 0


def test_proxy_api_key(served):
    s = served(api_key="s3cret")
    with pytest.raises(openai.AuthenticationError):
        s.client("wrong").models.list()
    assert s.client("s3cret").models.list().data[0].id == MODEL


def test_serve_warns_beyond_loopback(monkeypatch, capsys):
    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append(kw))
    serve(FakeModel(), port=8123)
    assert "WARNING" not in capsys.readouterr().err
    serve(FakeModel(), host="0.0.0.0")
    assert "without authentication" in capsys.readouterr().err
    serve(FakeModel(), host="0.0.0.0", api_key="k")
    assert "WARNING" not in capsys.readouterr().err
    assert runs[0] == {"host": "127.0.0.1", "port": 8123, "log_level": "info"}


def test_cli_proxy_builds_the_model_lazily_and_serves_it(monkeypatch):
    import client_sdk
    import privtune.proxy
    from privtune.cli import build_parser, main

    args = build_parser().parse_args(["proxy", "--model", MODEL])
    assert (args.host, args.port, args.cache_dir, args.proxy_api_key) == ("127.0.0.1", 8001, None, None)
    built, served_with = [], []
    monkeypatch.setattr(
        client_sdk, "FineTunedModel", lambda model, **kw: built.append((model, kw)) or FakeModel(), raising=False
    )
    monkeypatch.setattr(privtune.proxy, "serve", lambda model, **kw: served_with.append(kw))
    argv = ["proxy", "--model", MODEL, "--base-url", "http://svc/v1", "--api-key", "k", "--cache-dir", "/c"]
    assert main([*argv, "--port", "9000"]) == 0
    (model, options), (kw,) = built[0], served_with
    assert model == MODEL and options["cache_dir"] == "/c" and options["client"].base_url.startswith("http://svc/v1")
    assert kw == {"host": "127.0.0.1", "port": 9000, "api_key": None}
