"""The attack suite on one experiment: every attack under both threat models, as typed result entries.

Promises: ``run_attacks`` runs every attack of ``evaluation.attacks.ATTACKS`` on the server's view and
returns one ``AttackEntry`` per attack and threat model (skipped attacks included, with ``asr`` None),
each with its wall time; ``kit_fingerprints`` names the attack-kit entries that do not depend on the
noise draw or level, so equal fingerprints may share them across experiments (``Resources``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from typing import Any

import torch

from client_sdk.data import LabelMap
from evaluation.config import ATTACK_BUDGETS, ExperimentConfig
from evaluation.data import EvalData
from evaluation.harness.resources import Resources
from evaluation.harness.server_view import Observed
from evaluation.rows import AttackEntry

__all__ = ["NOISE_FIELDS", "kit_fingerprints", "run_attacks"]

NOISE_FIELDS = ("eta", "noise_multiplier")


def kit_fingerprints(config: ExperimentConfig, privatizer: Any, public_texts: list[str]) -> dict[str, str]:
    """Fingerprints of the attack-kit entries that do not depend on the noise draw or level.

    ``naive``: clean public representations (model, split, public texts, tokenisation).
    ``expected`` / ``prototypes_adaptive``: the mechanism's noiseless output on public text and on lone
    prototypes, which depend on its config without the noise level and on the fitted state (clip
    norm, OPT-3 constraints, centroids, importance table), not on eta. Equal fingerprints, equal values
    (up to the 1e-12-scaled noise of ``client_sdk.audit.noiseless_mechanism``).
    """
    base = hashlib.sha256()
    base.update(
        json.dumps([config.model, config.split_layer, config.max_length, config.batch_size, config.seed]).encode()
    )
    for text in public_texts:
        base.update(text.encode() + b"\0")
    naive = base.hexdigest()
    mech = hashlib.sha256(naive.encode())
    settings = {k: v for k, v in privatizer.mechanism.config.to_dict().items() if k not in NOISE_FIELDS}
    mech.update(json.dumps(settings, sort_keys=True, default=str).encode())
    state = privatizer.state
    if state is not None:
        mech.update(json.dumps(state.summary(), sort_keys=True, default=str).encode())
        for name in ("mu", "centroids", "centroid_labels", "importance_table"):
            value = getattr(state, name, None)
            if torch.is_tensor(value):
                mech.update(value.detach().cpu().contiguous().numpy().tobytes())
    fp = mech.hexdigest()
    return {"naive": "naive:" + naive, "expected": "expected:" + fp, "prototypes_adaptive": "protos:" + fp}


def run_attacks(
    observed: Observed,
    config: ExperimentConfig,
    resources: Resources,
    data: EvalData,
    privatizer: Any,
    top: torch.nn.Module,
    labels: LabelMap,
) -> list[AttackEntry]:
    """Every attack of ``evaluation.attacks.ATTACKS`` under both threat models; one entry each.

    The kit (``AttackKit.from_privatizer``) holds the victim's fitted privatizer (Kerckhoffs: the
    adaptive attacker knows the mechanism, its parameters and fitted state), the public texts with
    their attributes and task labels, the cached prototypes and the server's top model after
    training (its output is the pooled representation; the device's head is not the server's and
    is not in the kit). With mechanism ``none`` both threat models see the same thing, so "adaptive" copies
    "naive". An attack that cannot run (e.g. attribute attacks without an attribute) gets ``asr``
    None and ``skipped`` (A4 always: ``evaluation.attacks.a4_gradient_attribute``). ``details["harness_seconds"]``: wall time of the attack (both threat models).
    """
    from evaluation.attacks import ATTACKS, AttackKit, AttackUnavailable
    from evaluation.attacks import run_attacks as run_suite

    names = observed.attribute_names
    public = [r for r in data.public if r.label in labels.names]
    shared = kit_fingerprints(config, privatizer, [r.text for r in public])
    kit = AttackKit.from_privatizer(
        privatizer,
        [r.text for r in public],
        public_attributes=[names.index(str(r.attribute)) for r in public] if data.has_attribute else None,
        public_labels=[labels.encode(r.label) for r in public],
        top=top,
        prototypes=resources.prototypes(config.model, config.split_layer),
        seed=config.seed,
        batch_size=config.batch_size,
        cache=resources.kit_entries(shared),  # entries an earlier experiment computed for an equal kit
    )
    threat_models = ("naive",) if config.mechanism == "none" else ("naive", "adaptive")
    options = ATTACK_BUDGETS.get(config.attack_budget, {})
    out: list[AttackEntry] = []
    for name in ATTACKS:
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(config.seed)
        try:
            suite = run_suite(observed.observation, kit, [name], threat_models, generator, options, False)
            results = [AttackEntry.from_dict(r.to_dict()) for r in suite]
        except AttackUnavailable as exc:
            results = [
                AttackEntry(name=name, threat_model=m, asr=None, chance=None, n=0, details={}, skipped=str(exc))
                for m in threat_models
            ]
        seconds = round(time.perf_counter() - started, 2)
        results = [r.with_details(harness_seconds=seconds) for r in results]
        if config.mechanism == "none":
            results += [
                replace(r, threat_model="adaptive").with_details(same_as="naive")
                for r in results
                if r.threat_model == "naive"
            ]
        out += results
    resources.keep_kit_entries(shared, kit.cache)
    return out
