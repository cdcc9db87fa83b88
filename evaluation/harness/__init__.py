"""One privacy-utility experiment, trained through the service's own split code, in one process.

``run_experiment(config, resources)`` does, for one ``ExperimentConfig``:

1. load the dataset's private / public / test parts (``evaluation.data``);
2. fit a ``Privatizer`` (the device's audit point) on the private training texts and labels;
3. train with ``DeviceTrainer`` posting the real wire payloads to the worker's ``StepServer.handle``
   (``TopTrainer``: LoRA on the top blocks, returning the pooled representation) with the device's own
   ``ClassifierHead`` (``HeadTask``, trained with the job's optimiser), i.e. the same code as a service
   job minus HTTP and Redis; every step privatizes its batch again, so each epoch sees fresh noise;
4. measure utility: test accuracy (``DeviceTrainer.evaluate``: the trained top and head) through the
   same perturbed path (private inference), and, labelled separately, the same top and head fed
   unperturbed representations at inference time;
5. record what the server observed in the final training steps (``ServerView``: the decoded
   payloads, i.e. perturbed hidden states as sent, in float16, and the returned ``grad_output``,
   dL/d(representation) (b, d)) for
   at least ``n_attack`` private texts (``last_steps``), and every other view of those texts the
   server received: their rows in every earlier epoch, and the ``validation_views`` /
   ``inference_views`` inference requests of them (the SDK's job validates before and after
   training), as ``Observation.views`` (K, N, T, d) with the scoring truth ``exposure`` (positions at
   the mechanism's lowest noise level) and ``token_class``; run the attacks on it under both threat
   models (``run_attacks``, on ``evaluation.attacks``).

The result is one ``evaluation.rows.ResultRow``. The undefended figures (the same attacks with mechanism
``none``) are attached by ``evaluation.sweep.Runner``, which runs and caches the baseline row first.

Modules: ``experiment`` (``run_experiment``; ``train_and_observe``: all but the attacks), ``resources`` (per-process caches: the bottom and its
prototypes, datasets, shared attack-kit entries), ``server_view`` (what the server saw, as an
``Observation``), ``suite`` (the attacks on it). The config is ``evaluation.config.ExperimentConfig``,
re-exported here with the names the harness has always offered.
"""

from evaluation.config import (
    ATTACK_BUDGETS,
    HARNESS_VERSION,
    NOISELESS,
    OPT3_MECHANISMS,
    ExperimentConfig,
    config_fields,
)
from evaluation.harness.experiment import Trained, machine, now_iso, run_experiment, train_and_observe
from evaluation.harness.resources import Resources, model_id
from evaluation.harness.server_view import (
    Observed,
    ServerView,
    attacked_examples,
    build_observation,
    exposure_truth,
    last_steps,
    noise_scales,
    token_classes,
    tracked_positions,
)
from evaluation.harness.suite import NOISE_FIELDS, kit_fingerprints, run_attacks

__all__ = [
    "ATTACK_BUDGETS",
    "HARNESS_VERSION",
    "NOISELESS",
    "NOISE_FIELDS",
    "OPT3_MECHANISMS",
    "ExperimentConfig",
    "Observed",
    "Resources",
    "ServerView",
    "Trained",
    "attacked_examples",
    "build_observation",
    "exposure_truth",
    "config_fields",
    "kit_fingerprints",
    "last_steps",
    "machine",
    "model_id",
    "noise_scales",
    "now_iso",
    "run_attacks",
    "run_experiment",
    "token_classes",
    "tracked_positions",
    "train_and_observe",
]
