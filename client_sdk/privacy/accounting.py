"""Privacy accounting per text over every view a job sends, and the plain-language summary.

``account(config, state, views=..., tokens_per_text=..., label_epsilon=...)`` returns the job's record:
the per-token loss bound of one view, its sum over a text's tokens (basic composition over the tokens
of a text: the states of one text are released together), the number of views charged (per-text
noise: a re-send is the same vector, post-processing of the first view, so any number of views costs
one; fresh noise: basic composition, K views cost K times one), the total per text, and, in plain
words, where a bound does not hold. ``summary(record)`` is the short text the SDK prints before
training starts.

The bounds, per token with noise scale b (client_sdk.privacy.mechanisms; Delta = 2C the L2 diameter
of the clipped set, d the hidden size):

- d_chi l1 (Laplace b per coordinate): density ratio <= exp(||h - h'||_1 / b), worst case over the
  clipped set exp(sqrt(d) Delta / b) (the L1 diameter of an L2 ball of diameter Delta);
- d_chi l2: exp(||h - h'||_2 / b) <= exp(Delta / b);
- gaussian (std s): (eps, delta)-DP with eps = Delta sqrt(2 ln(1.25 / delta)) / s (the classical bound,
  stated for delta = 1e-5; it needs eps < 1 to be tight, and is reported as is otherwise);
- OPT-3's deterministic shift (||delta*|| <= eps_local) widens the set of possible means, adding
  2 eps_local (l1: 2 sqrt(d) eps_local) to the diameter.

These are worst-case bounds over any two inputs; with d = 384 they are far from a meaningful
guarantee (tens to thousands of nats per token). The measured attacks (docs/RESULTS.md, the on-device
audit) are what says how much an attacker recovers; the record says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["GAUSSIAN_DELTA", "account", "label_keep_probability", "summary"]

GAUSSIAN_DELTA = 1e-5


def label_keep_probability(epsilon: float, num_labels: int) -> float:
    """Randomised response over ``num_labels`` labels: keep the true label with e^eps / (e^eps + K - 1)."""
    return math.exp(epsilon) / (math.exp(epsilon) + num_labels - 1)


def _per_token(config: Any, state: Any, scale_min: float, scale_max: float, dim: int) -> dict[str, Any]:
    """Worst-case loss per token for the least and the most noised token (one view)."""
    delta = float(state.sensitivity)
    shift = float(state.eps_local or 0.0) if getattr(config, "uses_opt3", False) else 0.0
    if config.name == "gaussian":
        factor = math.sqrt(2 * math.log(1.25 / GAUSSIAN_DELTA))
        loss = lambda s: (delta + 2 * shift) * factor / s
        kind = f"(eps, {GAUSSIAN_DELTA:g})-DP, classical Gaussian bound"
    elif config.metric == "l2":
        loss = lambda s: (delta + 2 * shift) / s
        kind = "d_chi (L2 metric), worst case over the clipped set"
    else:
        loss = lambda s: math.sqrt(dim) * (delta + 2 * shift) / s
        kind = "d_chi (L1 metric), worst case over the clipped set"
    return {"kind": kind, "most_noised": loss(scale_max), "least_noised": loss(scale_min)}


def account(
    config: Any,
    state: Any,
    *,
    views: Mapping[str, int],
    tokens_per_text: float,
    dim: int,
    scale_range: tuple[float, float] | None = None,
    label_epsilon: float | None = None,
    num_labels: int | None = None,
) -> dict[str, Any]:
    """The job's privacy record per text (see the module doc).

    ``views``: how many times a text is sent, by purpose ({"training": epochs, "inference": ...} for a
    training text, "validation" for a held-out one); ``views_total`` is the most any one text gets; ``tokens_per_text``: the mean real tokens per text; ``scale_range``: the least
    and the largest noise scale the mechanism gives a token (``Privatizer.token_noise_scale`` over the
    data); ``label_epsilon``: randomised response on the labels, if on.
    """
    # a training text is sent in training and at inference; the validation texts are other texts
    total_views = max(int(views.get("training", 0)) + int(views.get("inference", 0)), int(views.get("validation", 0)))
    per_text_noise = getattr(config, "view_noise", None) == "per_text"
    record: dict[str, Any] = {
        "views": dict(views),
        "views_total": total_views,
        "tokens_per_text": round(float(tokens_per_text), 2),
        "notes": [],
    }
    notes = record["notes"]
    if not config.adds_noise:
        record.update(epsilon_per_text=None, composition=None)
        notes.append(
            "no noise: the server receives your token representations as computed"
            + (" (shifted by OPT-3, which is deterministic and carries no guarantee)" if config.uses_opt3 else "")
            + "; an attacker holding the bottom model recovers nearly every token"
        )
    else:
        lo, hi = scale_range if scale_range is not None else (float("nan"), float("nan"))
        token = _per_token(config, state, lo, hi, dim)
        charged = 1 if per_text_noise else total_views
        worst_text = token["least_noised"] * tokens_per_text  # every token at the least noise: an upper bound
        record.update(
            per_token_one_view=token,
            views_charged=charged,
            composition=(
                "per-text noise: every re-send of a text is the same vector (post-processing), so the views "
                "cost one; basic composition over the tokens of a text"
                if per_text_noise
                else "fresh noise: basic (sequential) composition over the views and over the tokens of a text"
            ),
            epsilon_per_text=worst_text * charged,
        )
        notes.append(
            "the bounds are worst case over any two inputs and are large at this hidden size: they are not a "
            "meaningful guarantee by themselves; the measured attack success (the audit, docs/RESULTS.md) is"
        )
        if per_text_noise:
            notes.append("per-text noise holds while the device's noise secret stays on the device")
        else:
            notes.append(f"fresh noise: a server that links the {total_views} views of a text can average them")
        if getattr(config, "uses_importance", False):
            if getattr(config, "importance_score", None) == "token_class":
                notes.append("the importance map comes from the tokenizer alone: norms reveal only which positions "
                             "are function words or punctuation")  # fmt: skip
            else:
                notes.append("the importance map is fitted on your labelled data and is not privatised: which "
                             "tokens get less noise is visible to the server through the norms it receives")  # fmt: skip
        if getattr(state, "sensitivity_mode", "clip") == "diameter":
            notes.append("Delta is the diameter of a sample of your data, not a bound: no bound holds for outliers")
    if label_epsilon is not None:
        keep = label_keep_probability(label_epsilon, int(num_labels or 2))
        record["labels"] = {"randomised_response_epsilon": float(label_epsilon), "keep_probability": keep,
                            "composition": "each text's label is randomised once; every view reuses it"}  # fmt: skip
    elif num_labels:
        record["labels"] = None
        notes.append(
            "labels are not protected: the gradients your device returns separate the texts by label (for two "
            "labels they lie on one line); use PrivacyConfig(label_epsilon=...) for label differential privacy"
        )
    return record


def summary(record: Mapping[str, Any], mechanism: str) -> str:
    """A few lines, in plain words, of what the server will see and what is protected."""
    views = record["views"]
    lines = [f"privacy: mechanism {mechanism!r}; a training text is sent {views.get('training', 0)} time(s) "
             f"(one per epoch), a validation text {views.get('validation', 0)}; inference sends each prompt again."]  # fmt: skip
    if record.get("epsilon_per_text") is None:
        lines.append("WARNING: no noise is added; this is plain split learning, not private fine-tuning.")
    else:
        token = record["per_token_one_view"]
        lines.append(
            f"the server sees a noisy vector per token; bound per token and view: {token['most_noised']:.3g} to "
            f"{token['least_noised']:.3g} ({token['kind']}); views charged: {record['views_charged']}; "
            f"per text: <= {record['epsilon_per_text']:.3g}."
        )
    lines += [f"- {note}" for note in record["notes"]]
    labels = record.get("labels")
    if labels:
        lines.append(f"labels: randomised response, epsilon {labels['randomised_response_epsilon']:g} "
                     f"(true label kept with probability {labels['keep_probability']:.2f}).")  # fmt: skip
    return "\n".join(lines)
