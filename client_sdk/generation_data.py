"""Generation fine-tuning data: (prompt, completion) pairs or chat conversations, encoded for a causal LM
with a mask of the tokens the model learns to predict (the completion, never the prompt).

Mask convention (the trainer shifts): ``loss_mask[i, j]`` is True when token ``j`` of row ``i`` is a
*target*, i.e. the logits at position ``j - 1`` are scored against ``input_ids[i, j]``. Position 0 is
never a target (nothing before it predicts it). A trainer therefore computes
``cross_entropy(logits[:, :-1], input_ids[:, 1:])`` over the positions where ``loss_mask[:, 1:]`` holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from client_sdk.data import DatasetError, _column, read_rows

PROMPT_KEYS = ("prompt", "input", "question", "statement", "text")
COMPLETION_KEYS = ("completion", "response", "answer", "output", "target")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class GenerationExample:
    """One training example: either ``prompt`` and ``completion``, or chat ``messages``
    (``{"role": "system" | "user" | "assistant", "content": str}`` dicts, at least one assistant turn)."""

    prompt: str | None = None
    completion: str | None = None
    messages: tuple[dict, ...] | None = None

    def __post_init__(self) -> None:
        pair = self.prompt is not None and self.completion is not None
        if pair == (self.messages is not None):
            raise ValueError("a GenerationExample has either a prompt and a completion, or messages")


class PromptTooLongError(ValueError):
    """The prompt (with its generation prompt) does not fit the model's context; ``param`` names the
    argument at fault ("prompt" or "messages")."""

    def __init__(self, message: str, *, param: str, length: int, max_length: int):
        super().__init__(message)
        self.param, self.length, self.max_length = param, length, max_length


# ---- reading ---------------------------------------------------------------------------------------


def load_generation_examples(
    dataset: Any,
    *,
    prompt_column: str | None = None,
    completion_column: str | None = None,
    messages_column: str | None = None,
) -> list[GenerationExample]:
    """Read a list of (prompt, completion) tuples, dict rows, OpenAI chat rows, a .jsonl / .jsonl.gz / .csv
    path or a ``datasets.Dataset``.

    Dict rows take the prompt from ``prompt_column`` and the completion from ``completion_column``, by
    default the first of ``PROMPT_KEYS`` / ``COMPLETION_KEYS`` they have. Chat rows
    (``{"messages": [...]}``; the column named by ``messages_column``; in a CSV a JSON string) are used
    when ``messages_column`` is given, or when the row has a ``messages`` key and no prompt/completion
    column was named. A row that does not fit is a ``DatasetError`` naming the columns expected and found."""
    if isinstance(dataset, (str, Path)):
        rows = read_rows(dataset)
    elif isinstance(dataset, Iterable):  # lists of tuples or dicts, datasets.Dataset (iterates dict rows)
        rows = list(dataset)
    else:
        raise DatasetError(
            f"unsupported dataset type {type(dataset).__name__}: give a list of (prompt, completion), "
            "chat rows with messages, a .jsonl/.csv path or a datasets.Dataset"
        )
    if not rows:
        raise DatasetError("the dataset is empty")
    return [_example(row, i, prompt_column, completion_column, messages_column) for i, row in enumerate(rows)]


def _example(row: Any, index: int, prompt_col: str | None, completion_col: str | None, messages_col: str | None):
    if isinstance(row, dict):
        if messages_col or (not prompt_col and not completion_col and "messages" in row):
            value = _column(row, index, messages_col, ("messages",), "messages")
            return GenerationExample(messages=validate_messages(value, f"row {index}"))
        prompt = _column(row, index, prompt_col, PROMPT_KEYS, "prompt")
        completion = _column(row, index, completion_col, COMPLETION_KEYS, "completion")
    elif (
        isinstance(row, Sequence)
        and not isinstance(row, (str, bytes))
        and row
        and all(isinstance(m, dict) for m in row)
    ):
        return GenerationExample(messages=validate_messages(row, f"row {index}"))
    elif isinstance(row, Sequence) and not isinstance(row, (str, bytes)) and len(row) == 2:
        prompt, completion = row
    else:
        raise DatasetError(
            f"row {index}: expected (prompt, completion), a dict with prompt and completion columns, "
            "or a chat row with messages"
        )
    for what, value in (("prompt", prompt), ("completion", completion)):
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(f"row {index}: {what} must be a non-empty string, got {value!r}")
    return GenerationExample(prompt=prompt, completion=completion)


def validate_messages(value: Any, where: str, *, need_assistant: bool = True) -> tuple[dict, ...]:
    """Chat messages as a tuple of ``{"role", "content"}`` dicts (a JSON string is parsed); roles and
    contents are checked, and with ``need_assistant`` at least one assistant turn is required."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DatasetError(
                f"{where}: messages must be a list of role/content dicts (got a non-JSON string)"
            ) from None
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise DatasetError(f"{where}: messages must be a non-empty list of role/content dicts")
    messages = []
    for j, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DatasetError(f"{where}, message {j}: expected a dict with role and content, got {message!r}")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise DatasetError(f"{where}, message {j}: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise DatasetError(f"{where}, message {j}: content must be a non-empty string, got {content!r}")
        messages.append({"role": role, "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DatasetError(f"{where}: the messages have no assistant turn to learn from")
    return tuple(messages)


# ---- encoding --------------------------------------------------------------------------------------


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _bos(tokenizer: Any) -> list[int]:
    """``[bos_token_id]`` when the tokenizer prepends one to plain text, else ``[]``."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and list(tokenizer("a")["input_ids"][:1]) == [bos] else []


def _special_ids(tokenizer: Any) -> set[int]:
    """Ids of the special tokens, including added ones flagged special (e.g. end-of-turn markers)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if getattr(token, "special", False)}


def _render(tokenizer: Any, messages: Sequence[dict], generation_prompt: bool = False) -> str:
    if not messages and not generation_prompt:
        return ""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def _encode_chat(messages: Sequence[dict], tokenizer: Any) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and their target flags.

    Turn k is what rendering ``messages[:k + 1]`` adds to ``messages[:k]``; of an assistant turn, what
    follows the generation prompt (``messages[:k]`` with ``add_generation_prompt=True``) is the target,
    up to and including the first special token after the content (the end-of-turn token, e.g.
    ``<|im_end|>``); what the template puts after it (a newline) is not. Token boundaries are found as
    the common prefix of the ids of each rendering with those of the whole conversation, so a template
    that appends something after the last message (rendered anew for each prefix) does not shift them."""
    text = _render(tokenizer, messages)
    full = _ids(tokenizer, text)
    mask = [False] * len(full)
    special = _special_ids(tokenizer)
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head, turn = _render(tokenizer, messages[:k], generation_prompt=True), _render(tokenizer, messages[: k + 1])
        start = _common_prefix(_ids(tokenizer, head), full)
        end = _common_prefix(_ids(tokenizer, turn), full)
        if end <= start:
            raise ValueError(f"the chat template does not render assistant turn {k} after its generation prompt")
        stop = next((j + 1 for j in range(start + 1, end) if full[j] in special), end)
        mask[start:stop] = [True] * (stop - start)
    return full, mask


def _encode_plain(prompt: str, completion: str, tokenizer: Any) -> tuple[list[int], list[bool]]:
    """``[BOS] prompt + " " + completion EOS``; the targets are the completion tokens and the EOS."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither a chat template nor an EOS token to end a completion")
    bos = _bos(tokenizer)
    full = bos + _ids(tokenizer, f"{prompt} {completion}") + [tokenizer.eos_token_id]
    n_prompt = _common_prefix(bos + _ids(tokenizer, prompt), full)
    return full, [False] * n_prompt + [True] * (len(full) - n_prompt)


def _encode_one(example: GenerationExample, tokenizer: Any) -> tuple[list[int], list[bool]]:
    if example.messages is not None:
        if not has_chat_template(tokenizer):
            raise ValueError("chat messages need a tokenizer with a chat template")
        return _encode_chat(example.messages, tokenizer)
    if has_chat_template(tokenizer):
        turns = ({"role": "user", "content": example.prompt}, {"role": "assistant", "content": example.completion})
        return _encode_chat(turns, tokenizer)
    return _encode_plain(example.prompt, example.completion, tokenizer)


def _truncate(ids: list[int], mask: list[bool], max_length: int) -> tuple[list[int], list[bool]]:
    """At most ``max_length`` tokens: cut from the right; when that would leave no target, drop prompt
    tokens from the left instead, keeping the first completion whole when it fits (with the end of the
    prompt before it) and else its first ``max_length - 1`` tokens after one prompt token."""
    if len(ids) <= max_length or any(mask[:max_length]):
        return ids[:max_length], mask[:max_length]
    first = mask.index(True)
    end = next((j for j in range(first, len(mask)) if not mask[j]), len(mask))
    start = min(first - 1, end - max_length)
    return ids[start : start + max_length], mask[start : start + max_length]


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def encode_generation(
    examples: Sequence[GenerationExample], tokenizer: Any, max_length: int
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` (b, t) int64, ``attention_mask`` (b, t) int64 and ``loss_mask`` (b, t)
    bool, t <= ``max_length`` (the longest row after truncation).

    ``loss_mask[i, j]`` is True exactly when token j is a target (see the module docstring: the loss at
    position j - 1 predicts token j): the completion and its EOS, or, for chat, each assistant turn's
    content and its end-of-turn token. Prompt/completion pairs go through the chat template as a user
    and an assistant turn when the tokenizer has one, else as ``[BOS] prompt + " " + completion EOS``.
    Rows longer than ``max_length`` are cut from the right, unless that would leave no target: then
    prompt tokens are dropped from the left instead (see ``_truncate``), so every row has a target."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if not examples:
        raise ValueError("no examples to encode")
    rows = [_truncate(*_encode_one(example, tokenizer), max_length) for example in examples]
    b, t = len(rows), max(len(ids) for ids, _ in rows)
    input_ids = torch.full((b, t), _pad_id(tokenizer), dtype=torch.int64)  # (b, t)
    attention_mask = torch.zeros((b, t), dtype=torch.int64)  # (b, t)
    loss_mask = torch.zeros((b, t), dtype=torch.bool)  # (b, t)
    for i, (ids, mask) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        attention_mask[i, : len(ids)] = 1
        loss_mask[i, : len(ids)] = torch.tensor(mask, dtype=torch.bool)
    loss_mask[:, 0] = False  # nothing predicts the first token
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def encode_prompt(prompt_or_messages: str | Sequence[dict], tokenizer: Any, max_length: int) -> list[int]:
    """Token ids of a prompt for generation, ending where the model's answer starts: the chat template
    with ``add_generation_prompt=True`` when the tokenizer has one (a string is one user turn), else
    ``[BOS] prompt``. Longer than ``max_length`` is a ``PromptTooLongError`` naming the parameter."""
    if isinstance(prompt_or_messages, str):
        param = "prompt"
        if not prompt_or_messages.strip():
            raise ValueError("the prompt must be a non-empty string")
        if has_chat_template(tokenizer):
            text = _render(tokenizer, [{"role": "user", "content": prompt_or_messages}], generation_prompt=True)
            ids = _ids(tokenizer, text)
        else:
            ids = _bos(tokenizer) + _ids(tokenizer, prompt_or_messages)
    else:
        param = "messages"
        messages = validate_messages(prompt_or_messages, "messages", need_assistant=False)
        if not has_chat_template(tokenizer):
            raise ValueError("chat messages need a tokenizer with a chat template; give a prompt string")
        ids = _ids(tokenizer, _render(tokenizer, messages, generation_prompt=True))
    if len(ids) > max_length:
        raise PromptTooLongError(
            f"the {param} is {len(ids)} tokens with the generation prompt; the model takes at most {max_length}",
            param=param,
            length=len(ids),
            max_length=max_length,
        )
    return ids
