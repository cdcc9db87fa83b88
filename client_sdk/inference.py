"""Using a fine-tuned model privately (architecture.md, "Using a fine-tuned model").

A fine-tuned model is the worker's adapter (never leaves the service) plus the device's end (never
leaves the device: saved by training under its job directory, ``client_sdk.end_state``).
:class:`FineTunedModel` runs the bottom and the job's mechanism (with the state fitted for training,
so inputs are perturbed exactly as in training), sends the perturbed states to an inference session,
and finishes the forward pass with its head (``predict``) or tail (``generate``). For generation both
sides keep KV caches, so each new token costs one round trip; the device re-runs its few bottom
blocks over the sequence so far to perturb the new token with the importance the mechanism would
give it there. A session lost with its worker is reopened and replayed from the perturbed states
already sent (no new view of the text).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from client_sdk import protocol, wire
from client_sdk.client import Client
from client_sdk.end_state import EndStore
from client_sdk.errors import SessionExpiredError
from client_sdk.models.attention import KVCache

__all__ = ["FineTunedModel", "InferenceOptionError", "build_end"]

MAX_NEW_TOKENS = 1024


class InferenceOptionError(ValueError):
    """An option that is out of range or does not apply to this model; ``param`` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def build_end(meta: dict[str, Any], bottom: Any, artifact_dir: str | Path, generator: Any) -> Any:
    """A fresh device end described by ``meta`` (``DeviceSession.end_meta``): the classification head
    or the generation tail (base blocks from the artifact, LoRA drawn from ``generator``)."""
    from client_sdk.models.artifact import read_manifest
    from client_sdk.models.ends import ClassifierHead
    from client_sdk.models.load import load_tail

    if meta["task"] == "classification":
        return ClassifierHead(int(meta["hidden_size"]), len(meta["labels"]), generator)
    return load_tail(
        artifact_dir,
        bottom,
        read_manifest(artifact_dir),
        lora_r=int(meta["lora_r"]),
        lora_alpha=float(meta["lora_alpha"]),
        generator=generator,
    )


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token id from ``logits`` (|V|,): greedy at temperature 0, else nucleus sampling."""
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p  # the smallest prefix reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


class FineTunedModel:
    """A fine-tuned model used privately from the device that trained it.

    ``FineTunedModel("ft:...")`` (or ``job.model()``) finds the device's end under ``state_dir``
    (default ``$PRIVTUNE_STATE_DIR`` or ``~/.cache/privtune/jobs``) and the bottom in the bottom cache.
    ``seed`` fixes the noise and sampling generators (experiments); default: the OS entropy source.
    """

    def __init__(
        self,
        model: str,
        *,
        client: Client | None = None,
        state_dir: str | None = None,
        cache_dir: str | None = None,
        seed: int | None = None,
    ) -> None:
        from client_sdk.models import load_bottom
        from client_sdk.options import PrivacyConfig
        from client_sdk.privacy import load_state, mechanism_from_config
        from client_sdk.privacy.table import config_from_dict
        from client_sdk.privatizer import Privatizer
        from client_sdk.session import end_generator

        self.client = client or Client()
        record = self.client.models.retrieve(model)  # NotFoundError: unknown, or another organization's
        self.id, self.created = model, int(record.created)
        store = EndStore(model.rsplit(":", 1)[-1], state_dir)
        self.meta = meta = store.meta()
        self.task: str = meta["task"]
        path = self.client.bottoms.download(
            meta["model"], meta["split_layer"], cache_dir=cache_dir, tail_layers=meta["tail_layers"]
        )
        bottom, self.tokenizer, _ = load_bottom(path)
        state_path = store.directory / "privacy"
        state = load_state(state_path) if state_path.is_dir() else None
        mechanism = mechanism_from_config(config_from_dict(meta["privacy"]))
        self.privatizer = Privatizer(bottom, self.tokenizer, mechanism, state=state, max_length=meta["max_length"])
        self.end = build_end(meta, bottom, path, end_generator(seed)).eval()
        self.end.load_state(store.load_final())
        self.labels: list[str] | None = meta.get("labels")
        self.noise = PrivacyConfig(mechanism="none", seed=seed).generator()  # the mechanism's noise
        self.generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=self.noise)))
        self._session: dict[str, Any] | None = None
        self.last_usage: dict[str, int] = {}
        self.last_finish_reason = "stop"

    def __repr__(self) -> str:
        return f"FineTunedModel({self.id!r}, task={self.task!r})"

    # ---- the session --------------------------------------------------------------------------------
    def _session_id(self) -> str:
        if self._session is None:
            self._session = self.client.inference.open(self.id)
        return self._session["id"]

    def close(self) -> None:
        """Close the inference session (a new one opens on the next call)."""
        if self._session is not None:
            session, self._session = self._session, None
            with contextlib.suppress(SessionExpiredError):
                self.client.inference.close(session["id"])

    def _forward(self, hidden: torch.Tensor, mask: torch.Tensor, reset: bool) -> torch.Tensor:
        extra = {protocol.RESET: "1"} if reset else {}
        tensors = {protocol.HIDDEN: hidden, protocol.ATTENTION_MASK: mask.to(torch.uint8)}
        payload = wire.encode(tensors, wire.WireHeader(self._session_id(), 0, "infer", extra=extra))
        return wire.decode(self.client.inference.forward(self._session_id(), payload))[1][protocol.OUTPUT].float()

    def _send(self, history: list[torch.Tensor], new: torch.Tensor) -> torch.Tensor:
        """The middle's output for ``new`` (1, t, d) after ``history``; a lost session is rebuilt from it."""
        past = sum(h.shape[1] for h in history)
        mask = torch.ones(1, past + new.shape[1], dtype=torch.long)
        try:
            out = self._forward(new, mask, reset=not history)
        except SessionExpiredError:
            self._session = None  # reopen and replay what the server had (the same perturbed states)
            out = self._forward(torch.cat([*history, new], dim=1), mask, reset=True)[:, past:]
        history.append(new)
        return out

    # ---- classification -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, texts: Sequence[str] | str, batch_size: int = 32) -> list[str]:
        """The label of each text (classification models)."""
        if self.task != "classification":
            raise InferenceOptionError(f"{self.id} is a {self.task} model: use generate()", "model")
        texts = [texts] if isinstance(texts, str) else list(texts)
        self._session_id()
        batch_size = min(batch_size, int(self._session.get("max_batch_size") or batch_size))
        labels: list[str] = []
        for start in range(0, len(texts), batch_size):
            out = self.privatizer.privatize(texts[start : start + batch_size], generator=self.noise)
            try:
                rep = self._forward(out["hidden"], out["attention_mask"], reset=True)
            except SessionExpiredError:
                self._session = None
                rep = self._forward(out["hidden"], out["attention_mask"], reset=True)
            labels += [self.labels[i] for i in self.end(rep).argmax(-1).tolist()]
        self.last_usage = {"prompt_tokens": 0, "completion_tokens": 0}
        return labels

    # ---- generation ---------------------------------------------------------------------------------
    def generate(
        self,
        prompt_or_messages: str | list[dict[str, str]],
        *,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: str | list[str] | None = None,
        stream: bool = False,
        seed: int | None = None,
    ) -> str | Iterator[str]:
        """Continue ``prompt_or_messages`` (a string: a raw prompt; a list of ``{"role", "content"}``: a chat,
        with the model's chat template) by at most ``max_new_tokens`` tokens; the text, or with
        ``stream=True`` an iterator of text pieces. Stops at end-of-sequence or any of ``stop``."""
        if self.task != "generation":
            raise InferenceOptionError(f"{self.id} is a classification model: use predict()", "model")
        from client_sdk.generation_data import encode_prompt

        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise InferenceOptionError("max_new_tokens must be an integer", "max_new_tokens")
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise InferenceOptionError(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS}", "max_new_tokens")
        if not 0 <= temperature <= 2:
            raise InferenceOptionError("temperature must be in [0, 2]", "temperature")
        if not 0 < top_p <= 1:
            raise InferenceOptionError("top_p must be in (0, 1]", "top_p")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        self._session_id()
        context = int(self._session.get("max_context") or 2048)
        ids = encode_prompt(prompt_or_messages, self.tokenizer, context - max_new_tokens)
        generator = self.generator if seed is None else torch.Generator().manual_seed(seed)
        pieces = self._pieces(ids, max_new_tokens, temperature, top_p, stops, generator)
        return pieces if stream else "".join(pieces)

    @torch.no_grad()
    def _pieces(
        self, ids: list[int], max_new: int, temperature: float, top_p: float, stops: list[str], generator: Any
    ) -> Iterator[str]:
        tokens = torch.tensor([ids])  # (1, P)
        history: list[torch.Tensor] = []
        tail_cache = KVCache()
        eos = {int(i) for i in (self.tokenizer.eos_token_id, *self.privatizer.special_ids) if i is not None}
        new = self.privatizer.privatize_ids(tokens, torch.ones_like(tokens), generator=self.noise)["hidden"]
        generated: list[int] = []
        shown, final, hold = "", None, max((len(s) for s in stops), default=1) - 1
        self.last_finish_reason = "length"
        for _ in range(max_new):
            out = self._send(history, new)  # (1, t, d): the middle's output for the new positions
            mask = torch.ones(1, tokens.shape[1], dtype=torch.long)
            token = _sample(self.end(out, mask, cache=tail_cache)[0, -1], temperature, top_p, generator)
            if token in eos:
                self.last_finish_reason = "stop"
                break
            generated.append(token)
            tokens = torch.cat([tokens, torch.tensor([[token]])], dim=1)  # (1, P + n)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                self.last_finish_reason, final = "stop", text[:cut]
                break
            ready = len(text) - hold  # hold back what could still become a stop sequence
            if ready > len(shown) and not text.endswith("\ufffd"):  # nor half a character
                yield text[len(shown) : ready]
                shown = text[:ready]
            # the new token, perturbed with the importance the mechanism gives it in the sequence so far
            sent = self.privatizer.privatize_ids(tokens, torch.ones_like(tokens), generator=self.noise)
            new = sent["hidden"][:, -1:]  # (1, 1, d)
        if final is None:
            final = self.tokenizer.decode(generated, skip_special_tokens=True)
        if len(final) > len(shown):
            yield final[len(shown) :]
        self.last_usage = {"prompt_tokens": len(ids), "completion_tokens": len(generated)}
