"""Privacy mechanisms of the PrivTune method (docs: method.md sections 2-6).

Mechanisms are registered by name (``MECHANISMS``) with frozen, validated config dataclasses;
every ``perturb`` takes its random generator as an argument::

    from client_sdk.privacy import get_mechanism, prepare_state, PerturbContext

    mech = get_mechanism("dchi", eta=20.0, metric="l1")
    state = prepare_state(mech.config, train_hidden=sample)            # clip norm C, Delta, ...
    noisy = mech.perturb(hidden, mask, PerturbContext(state=state), generator=torch.Generator().manual_seed(0))

``client_sdk.privatizer.Privatizer`` wires these to a bottom model and tokenizer.
"""

from .config import (
    DChiConfig,
    DChiImportanceConfig,
    GaussianConfig,
    MechanismConfig,
    NoneConfig,
    Opt3Config,
    Opt3ImportanceConfig,
    PrivTuneConfig,
)
from .dchi import clip_by_norm, dchi_privacy_statement, sample_gaussian, sample_l1, sample_l2, secure_generator
from .errors import (
    InvalidChoiceError,
    NeighbourCacheError,
    PrivacyConfigError,
    PrivacyError,
    PrivacyStateError,
    UnknownMechanismError,
    UnknownParameterError,
)
from .importance import (
    classification_importance,
    generation_importance,
    generation_threshold,
    importance_to_scale,
    top_fraction_threshold,
)
from .mechanisms import Mechanism, PerturbContext
from .neighbours import NeighbourIndex, cosine_knn, exact_hop_sets
from .opt3 import opt3_delta, similarity
from .registry import MECHANISMS, config_from_dict, get_config, get_mechanism, mechanism_class, mechanism_from_config
from .state import PreparedState, prepare_state

__all__ = [
    "MECHANISMS",
    "DChiConfig",
    "DChiImportanceConfig",
    "GaussianConfig",
    "InvalidChoiceError",
    "Mechanism",
    "MechanismConfig",
    "NeighbourCacheError",
    "NeighbourIndex",
    "NoneConfig",
    "Opt3Config",
    "Opt3ImportanceConfig",
    "PerturbContext",
    "PreparedState",
    "PrivTuneConfig",
    "PrivacyConfigError",
    "PrivacyError",
    "PrivacyStateError",
    "UnknownMechanismError",
    "UnknownParameterError",
    "classification_importance",
    "generation_threshold",
    "top_fraction_threshold",
    "clip_by_norm",
    "config_from_dict",
    "cosine_knn",
    "dchi_privacy_statement",
    "exact_hop_sets",
    "generation_importance",
    "get_config",
    "get_mechanism",
    "importance_to_scale",
    "mechanism_class",
    "mechanism_from_config",
    "opt3_delta",
    "prepare_state",
    "sample_gaussian",
    "sample_l1",
    "sample_l2",
    "secure_generator",
    "similarity",
]
