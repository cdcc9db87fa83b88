"""What the server saw in one experiment, as the attacks' ``Observation``.

Promises: ``ServerView`` keeps, for chosen training steps, exactly what the server received (the decoded
wire payloads: perturbed hidden states in float16, the attention mask) and the ``grad_output`` the
device returned (dL/d(representation) (b, d) through the device's private head: on the head-on-device
protocol the server's output is the pooled representation); ``last_steps`` chooses the final steps that
hold ``n_attack`` texts;
``build_observation`` assembles them, re-encoding the texts to check that they match what was sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from client_sdk import protocol, wire
from client_sdk.data import LabelMap, batch_indices
from evaluation.config import ExperimentConfig
from evaluation.data import EvalData

__all__ = ["Observed", "ServerView", "build_observation", "last_steps"]


class ServerView:
    """A ``post`` wrapper that keeps what the server received on chosen steps, then forwards.

    ``steps``: the training steps whose activations are kept; their ``grad_output`` (b, d) (which
    arrives with the next step's payload, or with the final flush) is kept too. Payloads are decoded
    with the same codec the worker uses, so the tensors are exactly what the server saw (float16).
    ``metrics`` keeps any ``metrics`` extra a request carried (none with ``report_metrics=False``).
    """

    def __init__(self, post: Any, steps: set[int]):
        self.post, self.steps = post, steps
        self.hidden: dict[int, torch.Tensor] = {}
        self.mask: dict[int, torch.Tensor] = {}
        self.grad: dict[int, torch.Tensor] = {}  # step -> (b, d) dL/d(representation)
        self.metrics: dict[int, str] = {}

    def __call__(self, payload: bytes) -> bytes:
        header, tensors = wire.decode(payload)
        if protocol.METRICS in header.extra:
            self.metrics[header.step] = header.extra[protocol.METRICS]
        if header.kind == "step":
            if header.step in self.steps and protocol.HIDDEN in tensors:
                self.hidden[header.step] = tensors[protocol.HIDDEN].float()
                self.mask[header.step] = tensors[protocol.ATTENTION_MASK].long()
            if header.step - 1 in self.steps and protocol.GRAD_OUTPUT in tensors:
                self.grad[header.step - 1] = tensors[protocol.GRAD_OUTPUT].float()
        return self.post(payload)


def _pad_cat(chunks: list[torch.Tensor], length: int, value: float = 0) -> torch.Tensor:
    """Concatenate (b_i, t_i, ...) chunks along dim 0, right-padding dim 1 to ``length``."""
    out = []
    for c in chunks:
        pad = [0, 0] * (c.dim() - 2) + [0, length - c.shape[1]]
        out.append(torch.nn.functional.pad(c, pad, value=value))
    return torch.cat(out)


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


@dataclass
class Observed:
    """The server's view of the watched texts as an attack ``Observation``, plus diagnostics.

    ``observation.hidden`` is what was sent (float16 on the wire), ``grad_output`` (n, d) the
    dL/d(representation) rows the device returned for those texts (through its own head, which the
    server never sees), ``num_labels`` the job's label count (public in the job contract); input ids,
    attributes and labels are there for scoring only.
    ``noise_ratio``: mean over real, non-special tokens of ||sent - clean|| / ||clean||.
    """

    observation: Any
    texts: list[str]
    attribute_names: tuple[str, ...]
    noise_ratio: float


@torch.no_grad()
def build_observation(
    view: ServerView, data: EvalData, config: ExperimentConfig, privatizer: Any, plain: Any
) -> Observed:
    """Assemble the watched steps into one ``Observation`` (rows in step order, at most ``n_attack``)."""
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
    input_ids, mask = _pad_cat(ids, length)[:n], _pad_cat(masks, length)[:n]
    special = torch.isin(input_ids, torch.tensor(privatizer.special_ids, dtype=input_ids.dtype)) | ~mask.bool()
    sent, unperturbed = _pad_cat(hidden, length)[:n], _pad_cat(clean, length)[:n]
    real = ~special
    ratio = ((sent - unperturbed).norm(dim=-1) / unperturbed.norm(dim=-1).clamp_min(1e-8))[real]
    has_grad = all(g is not None for g in grads)
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
    )
    mean_ratio = float(ratio.mean()) if ratio.numel() else float("nan")
    return Observed(observation, texts[:n], attribute_names, mean_ratio)
