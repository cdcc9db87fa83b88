"""A1-label on the head-on-device protocol: the label partition from the returned gradient rows.

What the server receives per text is g = dL/d(representation) = W^T (softmax(W r + b) - onehot(y)) / B
for the device's private head W (C, d). It does not know W, so the old attack (label = argmin of a
dL/d(logits) row) no longer exists: the rows are d-dimensional and carry no label coordinate. But
every row lies in the (C-1)-dimensional span of W's row differences, and for a fixed softmax p the
rows of different labels separate: -g is w_y minus the p-weighted mean of W's rows, so rows cluster
by label (for C = 2 they are (p_1 - y_1)(w_1 - w_0): two antipodal directions, whatever the noise
on the hidden states). The attack clusters the unit-normalised per-text rows with k-means (k = C,
the job's label count, which the job contract makes public; k-means++ restarts from a fixed seed).

Scores:

- ``asr``: label recovery under the best one-to-one matching of clusters to labels (Hungarian). This
  is an **upper bound**: it assumes the attacker can name the clusters (e.g. from a handful of public
  labelled examples or the class prior). What the head on the device hides is which cluster is which
  label, not the partition. ``details["matched_chance"]`` is what the same matching scores on
  labels shuffled over the same clusters (the matching's own optimism: a partition that carries no
  label information scores about this, a little above ``chance``, the majority-label share).
- ``details["named_asr"]``: the clusters named without any knowledge of the truth, from
  ``public_examples`` public labelled texts of the attacker's own passed through the same path (the
  bottom, clean for naive or through the victim's mechanism for adaptive, and the server's top).
  Cluster k is named by the one-to-one assignment maximising the cosine between its texts' mean
  representation (centred over all observed texts) and each label's mean public representation
  (centred over the public texts): the observed texts of one cluster share a label, so their mean
  representation sits near that label's public mean when the top's representation carries the
  label (it is what the device's head classifies). None without a top or public labels in the kit.
- ``details["features_matched_asr"]``: the same k-means matching on the server's own pooled features
  (the top's output for the received states) instead of the gradients: the partition without any
  returned gradient.
- ``details["features_classifier_asr"]``: labels predicted from the top's pooled features by a
  logistic regression the attacker fits on up to ``classifier_examples`` public labelled texts passed
  through the same path: inference of the label *from the text*, which no label-DP of the gradients
  can hide (it is what the fine-tuned model is for); the figure to read next to label DP.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from client_sdk.audit import majority_rate

from .a5_kmeans import best_kmeans
from .base import THREAT_MODELS, AttackResult, AttackUnavailable, Observation, check_threat_models, default_generator
from .gradients import top_output
from .kit import AttackKit

__all__ = ["a1_label_clustering", "best_assignment", "matched_accuracy", "name_clusters"]


def best_assignment(score: torch.Tensor) -> torch.Tensor:
    """(k,) a distinct column per row of ``score`` (k, C), k <= C, maximising the summed score (Hungarian:
    scipy when installed, else brute force over permutations, for C <= 8, else greedy)."""
    k, c = score.shape
    try:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(score.double().cpu().numpy(), maximize=True)
        out = torch.zeros(k, dtype=torch.long)
        out[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
        return out
    except ImportError:
        pass
    if c <= 8:
        best = max(itertools.permutations(range(c), k), key=lambda p: float(score[range(k), list(p)].sum()))
        return torch.tensor(best, dtype=torch.long)
    out = torch.zeros(k, dtype=torch.long)  # greedy, for large C without scipy only
    order = sorted(((float(score[r, col]), r, col) for r in range(k) for col in range(c)), reverse=True)
    used_r, used_c = set(), set()
    for _, r, col in order:
        if r not in used_r and col not in used_c:
            out[r] = col
            used_r.add(r)
            used_c.add(col)
    return out


def matched_accuracy(cluster: torch.Tensor, labels: torch.Tensor, k: int, c: int) -> tuple[float, torch.Tensor]:
    """Accuracy of ``cluster`` (n,) as a label prediction under the best one-to-one matching of its k
    clusters to the c labels of ``labels`` (n,); returns (accuracy, (k,) label of each cluster)."""
    counts = torch.zeros(k, c, dtype=torch.double)
    counts.index_put_((cluster, labels), torch.ones(cluster.shape[0], dtype=torch.double), accumulate=True)
    names = best_assignment(counts)  # (k,)
    return float(counts[torch.arange(k), names].sum()) / max(cluster.shape[0], 1), names


def name_clusters(
    cluster: torch.Tensor,
    k: int,
    observed: torch.Tensor,
    public: torch.Tensor,
    public_labels: torch.Tensor,
    c: int,
) -> torch.Tensor:
    """(k,) a label per cluster from representations only: ``observed`` (n, d) of the clustered texts,
    ``public`` (m, d) of labelled public texts ``public_labels`` (m,). Both are centred on their own
    mean; the score of (cluster, label) is the cosine of the cluster's mean observed representation
    and the label's mean public one (0 for a label without public texts), maximised one-to-one."""
    obs = observed.double() - observed.double().mean(dim=0)  # (n, d)
    pub = public.double() - public.double().mean(dim=0)  # (m, d)
    centre = torch.zeros(k, obs.shape[1], dtype=torch.double).index_add_(0, cluster, obs)  # (k, d)
    means = torch.zeros(c, pub.shape[1], dtype=torch.double).index_add_(0, public_labels, pub)  # (c, d)
    score = F.cosine_similarity(centre.unsqueeze(1), means.unsqueeze(0), dim=-1)  # (k, c); 0 for empty rows
    return best_assignment(score)


def _num_labels(observation: Observation, kit: AttackKit | None, num_labels: int | None) -> int:
    c = num_labels or observation.num_labels
    if c is None and kit is not None and kit.public_labels is not None:
        c = int(torch.unique(kit.public_labels).numel())
    if c is None or c < 2:
        raise AttackUnavailable("A1-label needs the job's label count (num_labels; public in the job contract)")
    return int(c)


def a1_label_clustering(
    observation: Observation,
    kit: AttackKit | None = None,
    threat_models: str | Sequence[str] = THREAT_MODELS,
    generator: torch.Generator | None = None,
    *,
    num_labels: int | None = None,
    restarts: int = 8,
    iters: int = 50,
    public_examples: int = 32,
    shuffles: int = 20,
    classifier_examples: int = 512,
) -> list[AttackResult]:
    """A1-label on every text of ``observation`` (see the module doc); one result per threat model.

    ``asr`` (the matched upper bound) is the same for every threat model; ``details["named_asr"]``
    differs (how the public examples are represented). ``generator`` (default seed 0) seeds k-means++,
    the label shuffles of ``matched_chance`` and the choice of the public examples.
    """
    if observation.grad_output is None or observation.labels is None:
        raise AttackUnavailable("A1-label needs recorded grad_output and the labels (for scoring)")
    started = time.perf_counter()
    g = default_generator(generator)
    c = _num_labels(observation, kit, num_labels)
    rows = observation.per_sample_gradient().double().cpu()  # (n, d_out)
    unit = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-30)  # (n, d_out)
    centres = best_kmeans(unit, c, g, restarts, iters)  # (k, d_out), k = min(c, n)
    k = int(centres.shape[0])
    cluster = torch.cdist(unit, centres).argmin(dim=1)  # (n,)
    truth = observation.labels.long().cpu()
    if kit is not None and kit.public_labels is not None and kit.public_labels.numel():
        c = max(c, int(kit.public_labels.max()) + 1)
    c = max(c, int(truth.max()) + 1)  # the confusion matrix's size (scoring)
    asr, _ = matched_accuracy(cluster, truth, k, c)
    shuffled = [matched_accuracy(cluster, truth[torch.randperm(truth.numel(), generator=g)], k, c)[0]
                for _ in range(shuffles)]  # fmt: skip
    pick = None
    if kit is not None and kit.top is not None and kit.public_labels is not None and kit.public_texts:
        m = len(kit.public_texts)
        pick = torch.randperm(m, generator=g)[: min(public_examples, m)].sort().values  # (K,)
        observed_rep = top_output(kit.top, observation.hidden, observation.attention_mask)  # (n, d)
        feature_unit = F.normalize(observed_rep.double().cpu(), dim=-1)
        feature_cluster = torch.cdist(feature_unit, best_kmeans(feature_unit, k, g, restarts, iters)).argmin(dim=1)
    details = {
        "k": k, "restarts": restarts, "row_dim": int(rows.shape[1]),
        "matched_chance": sum(shuffled) / max(len(shuffled), 1),
        "cluster_sizes": torch.bincount(cluster, minlength=k).tolist(),
        "public_examples": 0 if pick is None else int(pick.numel()),
        "features_matched_asr": None if pick is None else matched_accuracy(feature_cluster, truth, k, c)[0],
    }  # fmt: skip
    clustering_s = time.perf_counter() - started
    results = []
    for model in check_threat_models(threat_models):
        t0 = time.perf_counter()
        named = classified = None
        if pick is not None:
            classified = _feature_classifier(kit, model, observed_rep, truth, c, classifier_examples, g)
            shadow = kit.public(model).subset(pick)
            public_rep = top_output(kit.top, shadow.hidden, shadow.attention_mask)  # (K, d)
            names = name_clusters(cluster, k, observed_rep, public_rep, kit.public_labels[pick].long(), c)  # (k,)
            named = float((names[cluster] == truth).double().mean())
        seconds = round(clustering_s + time.perf_counter() - t0, 3)
        entry = {**details, "named_asr": named, "features_classifier_asr": classified, "seconds": seconds}
        results.append(AttackResult("A1-label", asr, majority_rate(truth), model, observation.n, entry))
    return results


def _feature_classifier(
    kit: AttackKit, model: str, observed: torch.Tensor, truth: torch.Tensor, c: int, examples: int, g: torch.Generator
) -> float:
    """Accuracy of a logistic regression on the top's pooled features, fitted on public labelled texts."""
    m = len(kit.public_texts)
    pick = torch.randperm(m, generator=g)[: min(examples, m)].sort().values
    shadow = kit.public(model).subset(pick)
    x = top_output(kit.top, shadow.hidden, shadow.attention_mask).double().cpu()  # (K, d)
    y = kit.public_labels[pick].long().cpu()
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    w = torch.zeros(x.shape[1], c, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")
    z = (x - mean) / std

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        predicted = (((observed.double().cpu() - mean) / std) @ w + b).argmax(dim=1)
    return float((predicted == truth).double().mean())
