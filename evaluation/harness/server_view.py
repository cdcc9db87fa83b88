"""What the server saw in one experiment, as the attacks' ``Observation``.

Promises:

- ``ServerView`` keeps exactly what the server received (the decoded wire payloads: perturbed hidden
  states in float16, the attention mask): for the watched final steps the whole batch and the
  ``grad_output`` the device returned (dL/d(representation) (b, d) through the device's private head:
  on the head-on-device protocol the server's output is the pooled representation); for every other
  training step only the rows of the attacked texts (``tracked``); and, inside ``capture(source)``,
  every inference payload (the validation / inference requests the harness sends for the attacked
  texts, as the device sends them).
- ``last_steps`` chooses the final steps that hold ``n_attack`` texts; ``attacked_examples`` names
  those texts (example indices, in observation row order); ``tracked_positions`` says where each sits
  in every training step's batch.
- ``build_observation`` assembles them, re-encoding the texts to check that they match what was sent,
  into an ``Observation`` whose ``views`` (K, N, T, d) are, in order: view 0 = ``hidden`` (the last
  epoch, the watched steps), then the earlier epochs in training order, then the captured views in
  the order they were sent; ``exposure`` (N, T) from the privatizer's per-position noise scales
  (``exposure_truth``), ``token_class`` (N, T) from ``client_sdk.privacy.token_classes``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from client_sdk import protocol, wire
from client_sdk.data import LabelMap, batch_indices
from evaluation.config import ExperimentConfig
from evaluation.data import EvalData

__all__ = [
    "EXPOSURE_MIN_RATIO",
    "Observed",
    "ServerView",
    "attacked_examples",
    "build_observation",
    "exposure_truth",
    "last_steps",
    "noise_scales",
    "token_classes",
    "tracked_positions",
]

#: the scales must span more than this ratio (max / min over real positions) to have an "exposed" level
EXPOSURE_MIN_RATIO = 1.5


@dataclass
class _Sent:
    """The tracked rows of one training step: observation ``rows`` (k,), ``hidden`` (k, t, d), ``mask`` (k, t)."""

    rows: torch.Tensor
    hidden: torch.Tensor
    mask: torch.Tensor


@dataclass
class _Captured:
    """One captured view: the inference payloads of one ``capture(source)`` block, in send order."""

    source: str
    hidden: list[torch.Tensor] = field(default_factory=list)  # (b_i, t_i, d) each
    mask: list[torch.Tensor] = field(default_factory=list)  # (b_i, t_i) each


class ServerView:
    """A ``post`` wrapper that keeps what the server received, then forwards.

    ``steps``: the training steps whose whole batch is kept; their ``grad_output`` (b, d) (which
    arrives with the next step's payload, or with the final flush) is kept too. ``tracked``: training
    step -> [(position in the batch, observation row)] of the attacked texts; those rows of every such
    step are kept (in the decoded dtype: float16 on the default wire). Payloads are decoded with the same codec
    the worker uses, so the tensors are exactly what the server saw. ``metrics`` keeps any ``metrics``
    extra a request carried (none with ``report_metrics=False``).
    """

    def __init__(self, post: Any, steps: set[int], tracked: Mapping[int, Sequence[tuple[int, int]]] | None = None):
        self.post, self.steps = post, steps
        self.tracked = dict(tracked or {})
        self.hidden: dict[int, torch.Tensor] = {}
        self.mask: dict[int, torch.Tensor] = {}
        self.grad: dict[int, torch.Tensor] = {}  # step -> (b, d) dL/d(representation)
        self.metrics: dict[int, str] = {}
        self.sent: dict[int, _Sent] = {}  # training step -> the attacked texts' rows
        self.captured: list[_Captured] = []
        self._capturing: _Captured | None = None

    @contextmanager
    def capture(self, source: str) -> Iterator[_Captured]:
        """Within the block, keep every inference payload as one more view of ``source`` ("validation", ...)."""
        self._capturing = _Captured(source)
        try:
            yield self._capturing
        finally:
            self.captured.append(self._capturing)
            self._capturing = None

    def __call__(self, payload: bytes) -> bytes:
        header, tensors = wire.decode(payload)
        if protocol.METRICS in header.extra:
            self.metrics[header.step] = header.extra[protocol.METRICS]
        if header.kind == "step" and protocol.HIDDEN in tensors:
            hidden, mask = tensors[protocol.HIDDEN], tensors[protocol.ATTENTION_MASK].long()
            if header.step in self.steps:
                self.hidden[header.step] = hidden.float()
                self.mask[header.step] = mask
            pairs = self.tracked.get(header.step)
            if pairs:
                at = torch.tensor([p for p, _ in pairs])
                rows = torch.tensor([r for _, r in pairs])
                self.sent[header.step] = _Sent(rows, hidden[at].clone(), mask[at])  # (k, t, d) as decoded, (k, t)
        if header.kind == "step" and header.step - 1 in self.steps and protocol.GRAD_OUTPUT in tensors:
            self.grad[header.step - 1] = tensors[protocol.GRAD_OUTPUT].float()
        if header.kind != "step" and self._capturing is not None and protocol.HIDDEN in tensors:
            self._capturing.hidden.append(tensors[protocol.HIDDEN])
            self._capturing.mask.append(tensors[protocol.ATTENTION_MASK].long())
        return self.post(payload)


def _fit(c: torch.Tensor, length: int, value: float = 0) -> torch.Tensor:
    """(b, t, ...) -> (b, length, ...): right-pad dim 1 with ``value`` or cut it."""
    if c.shape[1] >= length:
        return c[:, :length]
    pad = [0, 0] * (c.dim() - 2) + [0, length - c.shape[1]]
    return torch.nn.functional.pad(c, pad, value=value)


def _pad_cat(chunks: list[torch.Tensor], length: int, value: float = 0) -> torch.Tensor:
    """Concatenate (b_i, t_i, ...) chunks along dim 0, right-padding (or cutting) dim 1 to ``length``."""
    return torch.cat([_fit(c, length, value) for c in chunks])


def last_steps(n_examples: int, config: ExperimentConfig, total_steps: int, per_epoch: int) -> set[int]:
    """The final training steps whose batches hold at least ``n_attack`` texts (within the last epoch).

    The last steps are watched because the gradient attacks (A1, and A1-label's cluster naming) use
    the server's top model after training: with the linear schedule the learning rate has decayed to
    ~0 there, so that top (and the device's head) is, up to a few tiny updates, the one that produced
    the recorded gradients.
    """
    watched, rows, step = set(), 0, total_steps
    while rows < config.n_attack and step > total_steps - per_epoch:
        watched.add(step)
        rows += len(batch_indices(n_examples, config.batch_size, step, config.seed))
        step -= 1
    return watched


def attacked_examples(n_examples: int, config: ExperimentConfig, watched: set[int]) -> list[int]:
    """The attacked texts as training-example indices, in observation row order: the watched steps'
    batches in step order, at most ``n_attack``."""
    rows: list[int] = []
    for step in sorted(watched):
        rows += batch_indices(n_examples, config.batch_size, step, config.seed)
    return rows[: config.n_attack]


def tracked_positions(
    n_examples: int, config: ExperimentConfig, total_steps: int, attacked: Sequence[int]
) -> dict[int, list[tuple[int, int]]]:
    """Training step -> [(position in its batch, observation row)] of every attacked text (each epoch
    sends each text once, so every text appears once per epoch)."""
    row_of = {example: row for row, example in enumerate(attacked)}
    out: dict[int, list[tuple[int, int]]] = {}
    for step in range(1, total_steps + 1):
        idx = batch_indices(n_examples, config.batch_size, step, config.seed)
        pairs = [(position, row_of[i]) for position, i in enumerate(idx) if i in row_of]
        if pairs:
            out[step] = pairs
    return out


def exposure_truth(scale: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) bool: True at real positions whose noise scale is the lowest over all real positions.

    ``scale`` (N, T) float: the per-coordinate noise scale of each position (``Privatizer.token_noise_scale``).
    All False unless the scales take at least two levels, i.e. max / min over the real positions exceeds
    ``EXPOSURE_MIN_RATIO`` (a min of 0 with a positive max counts: those positions travel clean).
    Equality to the minimum is up to a relative 1e-4 (the scales are computed in float32).
    """
    real = attention_mask.bool()  # (n, t)
    none = torch.zeros_like(real)
    if not real.any():
        return none
    values = scale.float()[real]  # (m,)
    low, high = float(values.min()), float(values.max())
    if high <= 0 or (low > 0 and high / low <= EXPOSURE_MIN_RATIO):
        return none
    return real & (scale.float() <= low + 1e-4 * abs(low))


def noise_scales(privatizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
    """(N, T) float32 per-coordinate noise scales of the privatizer's mechanism, None when it does not
    report them (``Privatizer.token_noise_scale``, the mechanism's contract)."""
    method = getattr(privatizer, "token_noise_scale", None)
    if method is None:
        return None
    with torch.no_grad():
        return method(input_ids, attention_mask).float().cpu()  # (n, t)


def token_classes(privatizer: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """(N, T) int64: the ``client_sdk.privacy.token_classes`` class of each token (content / function /
    punctuation / special), from the tokenizer alone."""
    from client_sdk.privacy.token_classes import token_class_table

    size = max(int(getattr(privatizer.bottom, "vocab_size", 0) or 0), len(privatizer.tokenizer))
    size = max(size, int(input_ids.max()) + 1 if input_ids.numel() else 1)
    return token_class_table(privatizer.tokenizer, size)[input_ids]  # (n, t)


@dataclass
class Observed:
    """The server's view of the watched texts as an attack ``Observation``, plus diagnostics.

    ``observation.hidden`` is what was sent (float16 on the wire), ``grad_output`` (n, d) the
    dL/d(representation) rows the device returned for those texts (through its own head, which the
    server never sees), ``num_labels`` the job's label count (public in the job contract);
    ``observation.views`` (K, n, T, d) every view of those texts the server received (see the module);
    input ids, attributes, labels, exposure and token classes are there for scoring only.
    ``noise_ratio``: mean over real, non-special tokens of ||sent - clean|| / ||clean||.
    ``view_sources``: how many views came from training epochs, validation and inference.
    ``exposed_share``: share of the scored tokens in ``exposure`` (None: no noise scales reported).
    """

    observation: Any
    texts: list[str]
    attribute_names: tuple[str, ...]
    noise_ratio: float
    view_sources: dict[str, int] = field(default_factory=dict)
    exposed_share: float | None = None

    @property
    def views(self) -> int:
        """K: the number of views of each attacked text."""
        v = self.observation.views
        return 1 if v is None else int(v.shape[0])


def _training_views(
    view: ServerView, n: int, length: int, per_epoch: int, epochs: int, mask: torch.Tensor
) -> list[torch.Tensor]:
    """One (n, length, d) float32 view per training epoch, in epoch order, from the tracked rows."""
    out = []
    for epoch in range(epochs):
        steps = [s for s in view.sent if (s - 1) // per_epoch == epoch]
        if not steps:
            raise RuntimeError(f"epoch {epoch + 1}: no tracked rows of the attacked texts were recorded")
        d = view.sent[steps[0]].hidden.shape[-1]
        hidden, seen = torch.zeros(n, length, d), torch.zeros(n, dtype=torch.bool)
        for step in steps:
            sent = view.sent[step]
            hidden[sent.rows] = _fit(sent.hidden.float(), length)
            if not torch.equal(_fit(sent.mask, length), mask[sent.rows]):
                raise RuntimeError(f"step {step}: an attacked text's mask does not match its observation row")
            seen[sent.rows] = True
        if not bool(seen.all()):
            raise RuntimeError(f"epoch {epoch + 1}: {int((~seen).sum())} attacked texts were not sent")
        out.append(hidden)
    return out


def _captured_views(view: ServerView, n: int, length: int, mask: torch.Tensor) -> list[torch.Tensor]:
    """One (n, length, d) float32 view per ``capture`` block (its payloads hold the n texts in order)."""
    out = []
    for captured in view.captured:
        hidden, sent_mask = _pad_cat(captured.hidden, length).float(), _pad_cat(captured.mask, length)
        if hidden.shape[0] != n or not torch.equal(sent_mask, mask):
            raise RuntimeError(f"a {captured.source} view does not hold the {n} attacked texts in order")
        out.append(hidden)
    return out


@torch.no_grad()
def build_observation(
    view: ServerView, data: EvalData, config: ExperimentConfig, privatizer: Any, plain: Any
) -> Observed:
    """Assemble what ``view`` recorded into one ``Observation`` (rows in step order, at most ``n_attack``).

    ``views`` holds K = epochs + captured blocks views when ``view`` tracked the attacked texts over
    training (``tracked``), else None (only the watched steps). Raises ``RuntimeError`` when what was
    recorded does not match the re-encoded texts (a harness bug, never silently mis-scored).
    """
    from evaluation.attacks.base import Observation

    examples = [r.example() for r in data.private]
    labels = LabelMap.fit(ex.label for ex in examples)
    attribute_names = tuple(sorted({str(r.attribute) for r in (*data.private, *data.public)}))
    hidden, masks, ids, clean, grads, sizes, label_ids, attributes, texts = ([] for _ in range(9))
    for step in sorted(view.hidden):
        idx = batch_indices(len(examples), config.batch_size, step, config.seed)
        batch_texts = [examples[i].text for i in idx]
        input_ids, mask = privatizer.encode(batch_texts)  # the same tokenisation the device used
        if not torch.equal(mask, view.mask[step]):
            raise RuntimeError(f"step {step}: the re-encoded batch does not match what was sent")
        hidden.append(view.hidden[step])
        masks.append(mask)
        ids.append(input_ids)
        clean.append(plain.privatize(batch_texts)["hidden"])  # (b, t, d) unperturbed bottom output
        grad = view.grad.get(step)  # (b, d) dL/d(representation), or None
        if grad is not None and tuple(grad.shape) != (len(idx), view.hidden[step].shape[-1]):
            raise RuntimeError(f"step {step}: grad_output {tuple(grad.shape)} is not (batch, hidden size)")
        grads.append(grad)
        sizes += [len(idx)] * len(idx)
        label_ids += [labels.encode(examples[i].label) for i in idx]
        attributes += [attribute_names.index(str(data.private[i].attribute)) for i in idx]
        texts += batch_texts
    length = max(m.shape[1] for m in masks)
    n = min(config.n_attack, len(texts))
    input_ids, mask = _pad_cat(ids, length)[:n], _pad_cat(masks, length)[:n]  # (n, t)
    special = torch.isin(input_ids, torch.tensor(privatizer.special_ids, dtype=input_ids.dtype)) | ~mask.bool()
    sent, unperturbed = _pad_cat(hidden, length)[:n], _pad_cat(clean, length)[:n]  # (n, t, d)
    real = ~special
    ratio = ((sent - unperturbed).norm(dim=-1) / unperturbed.norm(dim=-1).clamp_min(1e-8))[real]
    has_grad = all(g is not None for g in grads)

    views, sources = None, {"training": 1}
    if view.sent:
        per_epoch = -(-len(examples) // config.batch_size)
        epochs = max((s - 1) // per_epoch for s in view.sent) + 1
        trained = _training_views(view, n, length, per_epoch, epochs, mask)  # epoch order
        if not torch.equal(trained[-1], sent):
            raise RuntimeError("the tracked last-epoch rows differ from the watched steps' payloads")
        captured = _captured_views(view, n, length, mask)
        views = torch.stack([sent, *trained[:-1], *captured])  # (K, n, t, d)
        sources = {"training": epochs}
        for c in view.captured:
            sources[c.source] = sources.get(c.source, 0) + 1

    scales = noise_scales(privatizer, input_ids, mask)  # (n, t) or None
    exposure = None if scales is None else exposure_truth(scales, mask)
    scored = mask.bool() & ~special
    exposed_share = None
    if exposure is not None:
        exposed_share = float(exposure[scored].float().mean()) if scored.any() else 0.0
    observation = Observation(
        hidden=sent,
        attention_mask=mask,
        input_ids=input_ids,
        special_mask=special,
        attribute=torch.tensor(attributes[:n]) if data.has_attribute else None,
        labels=torch.tensor(label_ids[:n]),
        grad_output=torch.cat(grads)[:n] if has_grad else None,  # (n, d)
        grad_batch_size=torch.tensor(sizes[:n]),
        num_labels=len(labels.names),
        views=views,
        exposure=exposure,
        token_class=token_classes(privatizer, input_ids),
    )
    mean_ratio = float(ratio.mean()) if ratio.numel() else float("nan")
    return Observed(observation, texts[:n], attribute_names, mean_ratio, sources, exposed_share)
