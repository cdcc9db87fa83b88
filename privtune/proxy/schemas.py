"""The request bodies the proxy accepts, as pydantic models: unknown fields are ignored (as OpenAI
does), wrong types and out-of-range values fail validation (a 400 naming the field)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from privtune.proxy.errors import invalid


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Request(_Body):
    model_config = ConfigDict(extra="allow")  # kept in model_extra to refuse the few that cannot be honoured


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Any = None  # a string, or text parts: see _text

    @field_validator("content")
    @classmethod
    def _text(cls, content: Any) -> str:
        if content is None or isinstance(content, str):
            return content or ""
        parts = content if isinstance(content, list) else [None]
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in parts):
            raise ValueError("content must be a string or a list of {'type': 'text', 'text': ...} parts")
        return "".join(p["text"] for p in parts)

    def text(self) -> str:
        return self.content or ""


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Request):
    """Options shared by both endpoints (OpenAI's names, ranges and defaults)."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    n: int = Field(1, ge=1)

    def stops(self) -> list[str] | None:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise invalid("'stop' takes at most 4 sequences.", "stop")
        return [s for s in stops if s] or None

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _refuse(self, names: dict[str, Any]) -> None:
        """400 for the options that would change the answer's shape and that this proxy cannot honour."""
        if self.n != 1:
            raise invalid("Only n=1 is supported.", "n")
        for name, allowed in names.items():
            if (self.model_extra or {}).get(name) not in (None, False, [], allowed):
                raise invalid(f"'{name}' is not supported by this endpoint (privtune proxy).", name)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def check(self) -> None:
        self._refuse({"tools": None, "functions": None, "logprobs": None, "top_logprobs": 0, "audio": None})
        fmt = (self.model_extra or {}).get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
            raise invalid("Only response_format {'type': 'text'} is supported.", "response_format")

    def token_limit(self) -> tuple[int | None, str]:
        """The completion budget and the name the caller gave it (max_completion_tokens wins)."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions

    def check(self) -> None:
        self._refuse({"logprobs": None, "echo": None, "suffix": None, "best_of": 1})
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise invalid("Only one prompt per request is supported.", "prompt")

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def token_limit(self) -> tuple[int | None, str]:
        return self.max_tokens, "max_tokens"
