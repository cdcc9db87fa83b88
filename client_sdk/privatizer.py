"""The audit point of the SDK: exactly what leaves the device.

``Privatizer(bottom, tokenizer, mechanism).fit(texts, labels)`` fits the mechanism's device-side state
on the user's own data; ``privatize(texts)`` returns ``{"hidden": (B, T, d) float32,
"attention_mask": (B, T) int64}``, which is all the SDK sends for those texts. Anyone can call it
and inspect the tensors: raw text and token ids never appear in its output.

The bottom model is the split runtime's ``BottomModel``: ``forward(input_ids, attention_mask,
output_attentions=False) -> BottomOutput(hidden, attentions)``, ``token_prototypes()``,
``input_embeddings()``, and the attributes ``hidden_size``, ``vocab_size``, ``is_causal``,
``split_layer``. The tokenizer is a Hugging Face tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .privacy import (
    Mechanism,
    MechanismConfig,
    PerturbContext,
    PreparedState,
    PrivacyConfigError,
    PrivacyStateError,
    classification_importance,
    generation_importance,
    generation_threshold,
    get_mechanism,
    mechanism_from_config,
    prepare_state,
    top_fraction_threshold,
)
from .privacy.config import Opt3Options
from .privacy.token_classes import CONTENT, SPECIAL, token_class_table
from .privacy.view_noise import position_seeds

__all__ = ["Privatizer"]


class Privatizer:
    """Bottom model + tokenizer + mechanism + fitted state.

    ``mechanism`` is a ``Mechanism``, a ``MechanismConfig`` or a registered name (default config).
    ``state`` may be given when already fitted; otherwise call ``fit`` (not needed for ``none``).
    The bottom is put in eval mode (it is frozen).
    Importance: a classification table when ``fit`` received labels, else attention-based
    (generation) importance computed from the bottom's attentions at ``privatize`` time.
    """

    def __init__(
        self,
        bottom: Any,
        tokenizer: Any,
        mechanism: Mechanism | MechanismConfig | str = "privtune",
        state: PreparedState | None = None,
        max_length: int = 64,
    ) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise PrivacyConfigError("max_length", "an integer >= 1", max_length)
        if isinstance(mechanism, str):
            mechanism = get_mechanism(mechanism)
        elif isinstance(mechanism, MechanismConfig):
            mechanism = mechanism_from_config(mechanism)
        if callable(getattr(bottom, "eval", None)):
            bottom.eval()  # the bottom is frozen: no dropout in what is sent
        self.bottom, self.tokenizer, self.mechanism = bottom, tokenizer, mechanism
        self.state = state
        self.max_length = max_length
        self.special_ids = tuple(sorted(set(getattr(tokenizer, "all_special_ids", []) or [])))
        self.sensitive_ids = _term_ids(tokenizer, getattr(mechanism.config, "sensitive_terms", ()))

    # ---- inputs -------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        params = getattr(self.bottom, "parameters", None)
        first = next(iter(params()), None) if callable(params) else None
        return first.device if first is not None else torch.device("cpu")

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise ``texts``, right-padded: (input_ids (B, T) int64, attention_mask (B, T) int64), T <= max_length."""
        if isinstance(texts, str):
            texts = [texts]
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            padding_side="right",  # the bottom expects right padding
            return_tensors="pt",
        )
        return enc["input_ids"].long(), enc["attention_mask"].long()

    def _special_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.isin(input_ids, torch.tensor(self.special_ids, dtype=input_ids.dtype))

    @torch.no_grad()
    def _bottom(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_attentions: bool = False) -> Any:
        device = self._device()
        call = self.bottom if callable(self.bottom) else self.bottom.forward
        return call(input_ids.to(device), attention_mask.to(device), output_attentions=output_attentions)

    # ---- fitting ------------------------------------------------------------------------------

    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[int] | torch.Tensor | None = None,
        *,
        cache_dir: str | Path | None = None,
        model_id: str | None = None,
        sample_tokens: int = 8192,
        batch_size: int = 32,
        generator: torch.Generator | None = None,
        prototypes: torch.Tensor | None = None,
    ) -> Privatizer:
        """Fit the mechanism's state on the user's own ``texts`` (and ``labels``); returns ``self``.

        Runs the bottom over texts in random order (``generator``, default seed 0) until it has
        ``sample_tokens`` real, non-special token representations, builds prototypes and the
        neighbour index (cached in ``cache_dir`` under ``model_id``, default the bottom's
        ``model_id``/``digest`` attribute or a fingerprint of the matrix) and, given labels, the
        classification importance table (``importance_score='token_class'``: the tokenizer's table, no
        labels needed), and, for per-text noise, the device's noise secret (drawn from ``generator``
        when one is given, for reproducible experiments; else from the OS entropy source). ``prototypes`` (|V|, d): the bottom's ``token_prototypes()``
        when the caller holds them already (used instead of recomputing them). Nothing is sent anywhere.
        """
        config = self.mechanism.config
        explicit_generator = generator is not None
        generator = generator or torch.Generator().manual_seed(0)
        input_ids, attention_mask = self.encode(texts)  # (n, t)
        labels_t = None if labels is None else torch.as_tensor(labels, dtype=torch.int64)
        if labels_t is not None and labels_t.shape != (input_ids.shape[0],):
            raise PrivacyConfigError(
                "labels", f"one integer label per text ({input_ids.shape[0]})", tuple(labels_t.shape)
            )
        train_hidden, train_labels = None, None
        if self.mechanism.name != "none":
            train_hidden, train_labels = self._sample(
                input_ids, attention_mask, labels_t, sample_tokens, batch_size, generator
            )
        importance_table = None
        if self.mechanism.uses_importance and getattr(config, "importance_score", None) == "token_class":
            importance_table = _class_importance(self.tokenizer, int(self.bottom.vocab_size))
        elif self.mechanism.uses_importance and labels_t is not None:
            importance_table = classification_importance(
                input_ids,
                attention_mask,
                labels_t,
                int(self.bottom.vocab_size),
                ignore_ids=self.special_ids,
                score=getattr(config, "importance_score", "log_ratio"),
            )
            if getattr(config, "importance_to_scale", None) == "top_fraction":
                importance_table = self._top_fraction_table(importance_table, input_ids, attention_mask)
        opt3_prototypes = embeddings = None
        if isinstance(config, Opt3Options):
            source = self.bottom.token_prototypes() if prototypes is None else prototypes  # (|V|, d)
            opt3_prototypes = source.detach().float().cpu()
            if config.neighbour_source == "embeddings":
                embeddings = self.bottom.input_embeddings().detach().float().cpu()
        model_id = model_id or getattr(self.bottom, "model_id", None) or getattr(self.bottom, "digest", None)
        secret = None  # per-text noise key: OS entropy, unless the caller seeded this fit (experiments)
        if explicit_generator:
            secret = "".join(f"{v:016x}" for v in torch.randint(0, 2**62, (4,), generator=generator).tolist())
        self.state = prepare_state(
            config, train_hidden=train_hidden, prototypes=opt3_prototypes, embeddings=embeddings,
            train_labels=train_labels, importance_table=importance_table, cache_dir=cache_dir,
            model_id=model_id, split_layer=int(getattr(self.bottom, "split_layer", 0)), generator=generator,
            noise_secret=secret,
        )  # fmt: skip
        return self

    def _top_fraction_table(
        self, table: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """``table - tau`` (the top ``top_fraction`` of occurrences > 0); tokens not seen in the fitting
        data are set to -1 (the noisier class), whatever tau is."""
        tau = top_fraction_threshold(
            table, input_ids, attention_mask, self.mechanism.config.top_fraction, ignore_ids=self.special_ids
        )
        seen = torch.zeros(table.shape[0], dtype=torch.bool)
        seen[input_ids[attention_mask.bool()].long()] = True
        return torch.where(seen, table - tau, torch.full_like(table, -1.0))

    def _sample(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None,
        sample_tokens: int,
        batch_size: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Up to ``sample_tokens`` real, non-special token representations (n, d) from texts in random
        order (the bottom runs only on as many texts as needed), with their sequence labels (n,)."""
        keep = attention_mask.bool() & ~self._special_mask(input_ids)  # (n, t)
        order = torch.randperm(input_ids.shape[0], generator=generator)
        hidden, token_labels, count = [], [], 0
        for start in range(0, order.shape[0], batch_size):
            rows = order[start : start + batch_size]
            out = self._bottom(input_ids[rows], attention_mask[rows]).hidden.float().cpu()  # (b, t, d)
            hidden.append(out[keep[rows]])
            if labels is not None:
                token_labels.append(labels[rows].unsqueeze(1).expand(-1, keep.shape[1])[keep[rows]])
            count += hidden[-1].shape[0]
            if count >= sample_tokens:
                break
        labels_out = torch.cat(token_labels)[:sample_tokens] if token_labels else None
        return torch.cat(hidden)[:sample_tokens], labels_out

    # ---- the audit call -----------------------------------------------------------------------

    @torch.no_grad()
    def privatize(
        self,
        texts: Sequence[str],
        generator: torch.Generator | None = None,
        labels: Sequence[int] | torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Exactly what the SDK sends for ``texts``: ``{"hidden": (B, T, d) float32, "attention_mask": (B, T) int64}``.

        Tokenise, run the frozen bottom, apply the mechanism with ``generator`` (None: a fresh
        OS-seeded generator). ``labels`` are used only by centroid_mode='label' and never sent.
        """
        input_ids, attention_mask = self.encode(texts)  # (b, t)
        return self.privatize_ids(input_ids, attention_mask, generator=generator, labels=labels)

    @torch.no_grad()
    def privatize_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generator: torch.Generator | None = None,
        labels: Sequence[int] | torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`privatize` of already tokenised, right-padded ``input_ids`` / ``attention_mask`` ``(b, t)``
        (generation: the device builds prompt + completion tokens itself)."""
        if self.state is None and self.mechanism.name != "none":
            raise PrivacyStateError(
                f"mechanism {self.mechanism.name!r} needs fitted state: call Privatizer.fit() first"
            )
        state = self.state or PreparedState()
        use_attention = self.mechanism.uses_importance and state.importance_table is None
        out = self._bottom(input_ids, attention_mask, output_attentions=use_attention)
        hidden = out.hidden  # (b, t, d)
        context = self._context(input_ids, attention_mask, out.attentions, labels)
        mask = attention_mask.to(hidden.device)
        sent = self.mechanism.perturb(hidden, mask, context, generator)
        return {
            "hidden": sent.detach().float().cpu().contiguous(),
            "attention_mask": attention_mask.long().contiguous(),
        }

    def _context(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, attentions: Any = None, labels: Any = None
    ) -> PerturbContext:
        """What the mechanism uses besides the states: importance, sensitive tokens, per-text seeds."""
        state = self.state or PreparedState()
        seeds = None
        if self.mechanism.uses_noise and state.noise_secret is not None:
            causal = bool(getattr(self.bottom, "is_causal", False))
            seeds = position_seeds(state.noise_secret, input_ids, attention_mask, causal)
        sensitive = None
        if self.sensitive_ids:
            sensitive = torch.isin(input_ids, torch.tensor(self.sensitive_ids, dtype=input_ids.dtype))
        return PerturbContext(
            state=state, input_ids=input_ids, importance=self.token_importance(input_ids, attention_mask, attentions),
            labels=None if labels is None else torch.as_tensor(labels, dtype=torch.int64),
            sensitive=sensitive, noise_seeds=seeds,
        )  # fmt: skip

    @torch.no_grad()
    def token_noise_scale(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) float32: the noise scale each real position of ``input_ids`` gets (the Laplace scale b for
        d_chi l1, the l2 scale, the Gaussian std; 0 at padding and for mechanisms without noise)."""
        if not self.mechanism.uses_noise:
            return torch.zeros(input_ids.shape, dtype=torch.float32)
        attentions = None
        if self.mechanism.uses_importance and (self.state is None or self.state.importance_table is None):
            attentions = self._bottom(input_ids, attention_mask, output_attentions=True).attentions
        context = self._context(input_ids, attention_mask, attentions)
        dim = int(self.bottom.hidden_size)
        return self.mechanism.noise_scale(attention_mask, context, dim).float().cpu()

    def token_importance(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, attentions: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor | None:
        """I^ (B, T) as the mechanism consumes it, None for mechanisms without importance.

        The fitted classification table when there is one, else generation importance from the bottom's
        ``attentions`` (eqs. 22-25); for the 'top_fraction' map, shifted so that the top tokens are > 0
        (the table is stored shifted by ``fit``; attention importance is shifted by the normal quantile).
        """
        if not self.mechanism.uses_importance:
            return None
        table = None if self.state is None else self.state.importance_table
        if table is not None:
            return table.to(input_ids.device)[input_ids]  # (b, t)
        if not attentions:
            raise PrivacyStateError("importance needs fit(texts, labels) or a bottom that returns attentions")
        device = attentions[0].device
        importance = generation_importance(
            attentions, attention_mask.to(device), causal=bool(self.bottom.is_causal),
            exclude_mask=self._special_mask(input_ids).to(device),
        )  # fmt: skip
        config = self.mechanism.config
        if config.importance_to_scale == "top_fraction":
            importance = importance - generation_threshold(config.top_fraction)
        return importance

    def privacy_record(self) -> dict[str, Any]:
        """The mechanism's honest privacy statement with its config and the fitted state's scalars."""
        return self.mechanism.privacy_record(self.state)


def _term_ids(tokenizer: Any, terms: Sequence[str]) -> tuple[int, ...]:
    """Token ids of ``terms``: each tokenised as given, lower-cased, and with a leading space."""
    ids: set[int] = set()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for term in terms:
        for form in {term, term.lower(), " " + term, " " + term.lower()}:
            ids.update(tokenizer(form, add_special_tokens=False)["input_ids"])
    return tuple(sorted(ids - special))


def _class_importance(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """The data-independent importance table (|V|,): +1 for function words and punctuation, -1 for
    content words and special tokens (already shifted: > 0 is the top class of 'top_fraction')."""
    classes = token_class_table(tokenizer, vocab_size)
    noisy = (classes == CONTENT) | (classes == SPECIAL)
    return torch.where(noisy, torch.tensor(-1.0), torch.tensor(1.0))
