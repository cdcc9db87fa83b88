"""The mechanisms of method.md section 6, one small class each, sharing one ``perturb`` contract.

``Mechanism.perturb(hidden (B, T, d), attention_mask (B, T), context, generator) -> (B, T, d)``:
only real positions (mask 1) are perturbed; padded positions are returned bit-for-bit unchanged.
Randomness comes only from ``generator`` (a ``torch.Generator``); when it is None a fresh generator
seeded from the OS entropy source is used.

    none             identity
    gaussian         clip -> + N(0, (noise_multiplier * Delta)^2 I)
    dchi             clip -> + d_chi noise, scale Delta / eta
    dchi_importance  clip -> + d_chi noise, scale Delta / (eta * w_i)
    opt3             clip -> + delta*_i (deterministic)
    opt3_importance  clip -> + delta*_i with budget eps_local / w_i
    privtune         clip -> + delta*_i + d_chi noise, scale Delta / (eta * w_i)   (eq. 26)

Noise mechanisms draw from ``generator`` (fresh noise) unless the context carries ``noise_seeds``
(per-text noise, ``client_sdk.privacy.view_noise``: each re-send of a text is the same view).
Importance mechanisms raise every scale to the config's ``noise_floor`` and give the user's
``sensitive_terms`` w_min. ``noise_scale(mask, context, d)`` says which scale each position got.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from . import config as cfg
from .dchi import clip_by_norm, dchi_privacy_statement, sample_gaussian, sample_l1, sample_l2, secure_generator
from .errors import PrivacyConfigError, PrivacyStateError
from .importance import importance_to_scale
from .opt3 import neighbour_directions, opt3_delta
from .state import PreparedState
from .view_noise import keyed_noise

__all__ = [
    "DChiImportanceMechanism",
    "DChiMechanism",
    "GaussianMechanism",
    "Mechanism",
    "NoneMechanism",
    "Opt3ImportanceMechanism",
    "Opt3Mechanism",
    "PerturbContext",
    "PrivTuneMechanism",
]


@dataclass(frozen=True)
class PerturbContext:
    """What a mechanism may use besides the representations (all device-side, never sent).

    state: the fitted ``PreparedState``; input_ids (B, T): token ids (OPT-3 neighbours);
    importance (B, T): I^ per token (importance mechanisms); labels (B,): only for centroid_mode='label';
    sensitive (B, T) bool: tokens of the user's sensitive terms (always w_min); noise_seeds (n,) int64:
    one seed per real position (mask order) for per-text noise (``client_sdk.privacy.view_noise``),
    None for fresh noise from the generator.
    """

    state: PreparedState | None = None
    input_ids: torch.Tensor | None = None
    importance: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    sensitive: torch.Tensor | None = None
    noise_seeds: torch.Tensor | None = None


class Mechanism:
    """Base class: validates shapes, perturbs the real tokens, restores the padded ones."""

    config_class: ClassVar[type[cfg.MechanismConfig]] = cfg.MechanismConfig
    # Read from the config class (one definition, shared with the torch-free table):
    name: ClassVar[str] = ""
    uses_noise: ClassVar[bool] = False
    uses_importance: ClassVar[bool] = False
    uses_opt3: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        config = cls.config_class
        cls.name, cls.uses_noise = config.name, config.adds_noise
        cls.uses_importance, cls.uses_opt3 = config.uses_importance, config.uses_opt3

    def __init__(self, config: cfg.MechanismConfig | None = None) -> None:
        config = self.config_class() if config is None else config
        if type(config) is not self.config_class:
            raise PrivacyConfigError("config", f"a {self.config_class.__name__}", type(config).__name__)
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def perturb(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        context: PerturbContext | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The representations to send, (B, T, d), same dtype; padded positions unchanged."""
        if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
            raise ValueError(
                f"expected hidden (B, T, d) and attention_mask (B, T), got {tuple(hidden.shape)} and {tuple(attention_mask.shape)}"
            )
        context = context or PerturbContext()
        mask = attention_mask.bool()  # (b, t)
        if not mask.any():
            return hidden.clone()
        if self.uses_noise and generator is None and context.noise_seeds is None:
            generator = secure_generator(hidden.device)
        tokens = hidden[mask].float()  # (n, d) real tokens only
        out = hidden.clone()
        out[mask] = self._perturb_tokens(tokens, mask, context, generator).to(hidden.dtype)
        return out

    def _perturb_tokens(
        self, h: torch.Tensor, mask: torch.Tensor, context: PerturbContext, generator: Any
    ) -> torch.Tensor:
        raise NotImplementedError

    def noise_scale(self, attention_mask: torch.Tensor, context: PerturbContext, dim: int) -> torch.Tensor:
        """(B, T) float32: the noise scale of every real position (the Laplace scale b for d_chi l1,
        the d_chi l2 scale, the Gaussian std), 0 at padding and for mechanisms without noise."""
        mask = attention_mask.bool()
        out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        if self.uses_noise and mask.any():
            scale = self._scale(mask, context, dim)
            out[mask] = torch.as_tensor(scale, dtype=torch.float32, device=mask.device).expand(int(mask.sum()))
        return out

    def _scale(self, mask: torch.Tensor, context: PerturbContext, dim: int) -> float | torch.Tensor:
        """The noise scale of the real tokens: a float or (n,)."""
        raise NotImplementedError

    def _sampler(self) -> Any:
        return sample_l2 if self.config.metric == "l2" else sample_l1

    def _noise(
        self, h: torch.Tensor, mask: torch.Tensor, context: PerturbContext, generator: torch.Generator | None
    ) -> torch.Tensor:
        """(n, d) noise for the real tokens ``h`` (n, d): per-text (seeded per position) or fresh."""
        n, d = h.shape
        scale = self._scale(mask, context, d)
        if context.noise_seeds is not None:
            if context.noise_seeds.shape != (n,):
                raise PrivacyStateError(
                    f"noise_seeds must be one per real token ({n}), got {tuple(context.noise_seeds.shape)}"
                )
            return keyed_noise(self._sampler(), context.noise_seeds, d, scale, h.device)
        scale = scale.to(generator.device) if torch.is_tensor(scale) else scale
        return self._sampler()((n,), d, scale, generator).to(h.device)

    def privacy_record(
        self, state: PreparedState | None = None, scale_factors: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """What this mechanism guarantees, stated honestly, plus its config (the sensitive terms as a count:
        the record is sent to the server) and the state's scalars."""
        config = self.config.to_dict()
        if config.get("sensitive_terms"):
            config["sensitive_terms"] = f"{len(config['sensitive_terms'])} term(s), kept on the device"
        return {"mechanism": self.name, "config": config, "state": state.summary() if state else None,
                "guarantee": self._guarantee(state, scale_factors)}  # fmt: skip

    def _guarantee(self, state: PreparedState | None, scale_factors: torch.Tensor | None) -> Any:
        return None

    # ---- shared steps -------------------------------------------------------------------------

    @staticmethod
    def _state(context: PerturbContext, *names: str) -> PreparedState:
        state = context.state
        missing = [n for n in names if state is None or getattr(state, n) is None]
        if missing:
            raise PrivacyStateError(
                f"mechanism needs a prepared state with {', '.join(missing)}; call prepare_state() / Privatizer.fit()"
            )
        return state

    def _clip(self, h: torch.Tensor, state: PreparedState) -> torch.Tensor:
        return h if state.clip_norm is None else clip_by_norm(h, state.clip_norm)

    def _weights(self, mask: torch.Tensor, context: PerturbContext) -> torch.Tensor:
        """w_i for the real tokens, (n,); the user's sensitive terms get at most w_min."""
        if context.importance is None:
            raise PrivacyStateError(f"mechanism {self.name!r} needs per-token importance in the context")
        c = self.config
        imp = context.importance.to(mask.device).float()[mask]  # (n,)
        w = importance_to_scale(imp, c.importance_to_scale, beta=c.beta, w_min=c.w_min, w_max=c.w_max)
        if context.sensitive is not None:
            sensitive = context.sensitive.to(mask.device).bool()[mask]  # (n,)
            w = torch.where(sensitive, w.clamp(max=c.w_min), w)
        return w

    def _floor_scale(self, state: PreparedState, dim: int) -> float:
        """The least noise scale ``noise_floor`` allows: E||z||_2 = noise_floor * C, with E||z||_2 =
        sqrt(2d) b for l1 (Laplace b per coordinate) and d b for l2 (C = clip norm, else Delta / 2)."""
        floor = float(getattr(self.config, "noise_floor", 0.0))
        if floor <= 0:
            return 0.0
        clip = state.clip_norm if state.clip_norm is not None else state.sensitivity / 2.0
        spread = dim if self.config.metric == "l2" else math.sqrt(2.0 * dim)
        return floor * clip / spread

    def _importance_scale(self, mask: torch.Tensor, context: PerturbContext, dim: int) -> torch.Tensor:
        """Delta / (eta * w_i), raised to the noise floor, (n,)."""
        state = self._state(context, "sensitivity")
        scale = state.sensitivity / (self.config.eta * self._weights(mask, context))
        return scale.clamp(min=self._floor_scale(state, dim))

    def _opt3(
        self, h: torch.Tensor, mask: torch.Tensor, context: PerturbContext, eps: float | torch.Tensor
    ) -> torch.Tensor:
        """delta* (n, d) for the (clipped) real tokens ``h`` (n, d)."""
        c = self.config
        state = self._state(context, "mu", "radius", "eps_local", "centroids", "neighbours")
        if context.input_ids is None:
            raise PrivacyStateError(f"mechanism {self.name!r} needs input_ids in the context (OPT-3 neighbours)")
        ids = context.input_ids.to(mask.device)[mask].long().cpu()  # (n,)
        index = state.neighbours
        dir_cos, dir_p = neighbour_directions(ids, state.proto_unit, state.proto_centred, index.knn, index.hop)
        dir_cos = None if dir_cos is None else dir_cos.to(h.device)
        dir_p = None if dir_p is None else dir_p.to(h.device)
        centroids = state.centroids.to(h.device)
        if c.centroid_mode == "pseudo":
            centroid = centroids[torch.cdist(h, centroids).argmin(dim=1)]  # (n, d) nearest of K
        else:
            if context.labels is None:
                raise PrivacyStateError("centroid_mode='label' needs labels in the context")
            labels = context.labels.to(mask.device).long().unsqueeze(1).expand(mask.shape)[mask]  # (n,)
            known = state.centroid_labels.to(mask.device)
            if not torch.isin(labels, known).all():
                raise PrivacyStateError("a label has no centroid (not seen when the state was fitted)")
            centroid = centroids[torch.searchsorted(known, labels)]
        result = opt3_delta(
            h, dir_cos, dir_p, centroid, state.mu.to(h.device), state.radius, eps,
            lam=c.lam, aia_sign=-1.0 if c.aia_direction == "away" else 1.0,
            steps=c.steps, step_size=c.step_size, step_rule=c.step_rule,
        )  # fmt: skip
        return result.delta

    def _dchi_guarantee(self, state: PreparedState | None, w: torch.Tensor | None, eps_local: float) -> Any:
        if state is None or state.sensitivity is None:
            return "state not prepared"
        if w is None:
            w = self._w_bounds()
        return dchi_privacy_statement(
            eta=self.config.eta, delta_sensitivity=state.sensitivity, metric=self.config.metric,
            dim=state.dim, eps_local=eps_local, scale_factors=w,
            sensitivity_mode=state.sensitivity_mode,
        )  # fmt: skip

    def _w_bounds(self) -> torch.Tensor:
        if not self.uses_importance:
            return torch.ones(1)
        if self.config.importance_to_scale == "sigmoid":
            return torch.tensor([0.0, 2.0])  # open interval (0, 2)
        return torch.tensor([self.config.w_min, self.config.w_max])


class NoneMechanism(Mechanism):
    """``none``: the identity (plain split learning)."""

    config_class = cfg.NoneConfig

    def _perturb_tokens(self, h, mask, context, generator):
        return h

    def _guarantee(self, state, scale_factors):
        return "none: representations leave the device unperturbed"


class GaussianMechanism(Mechanism):
    """``gaussian``: clip to C, add N(0, (noise_multiplier * Delta)^2) per coordinate."""

    config_class = cfg.GaussianConfig

    def _perturb_tokens(self, h, mask, context, generator):
        state = self._state(context, "sensitivity")
        return self._clip(h, state) + self._noise(h, mask, context, generator)

    def _scale(self, mask, context, dim):
        return self.config.noise_multiplier * self._state(context, "sensitivity").sensitivity

    def _sampler(self):
        return sample_gaussian

    def _guarantee(self, state, scale_factors):
        z = self.config.noise_multiplier
        return {"definition": "Gaussian mechanism per token, L2 sensitivity Delta, std = z * Delta",
                "noise_multiplier": z, "Delta": None if state is None else state.sensitivity,
                "statement": "(eps, delta)-DP per token for eps < 1 whenever z >= sqrt(2 ln(1.25/delta)) / eps"}  # fmt: skip


class DChiMechanism(Mechanism):
    """``dchi``: clip to C, add isotropic d_chi noise of scale Delta / eta."""

    config_class = cfg.DChiConfig

    def _perturb_tokens(self, h, mask, context, generator):
        state = self._state(context, "sensitivity")
        return self._clip(h, state) + self._noise(h, mask, context, generator)

    def _scale(self, mask, context, dim):
        return self._state(context, "sensitivity").sensitivity / self.config.eta

    def _guarantee(self, state, scale_factors):
        return self._dchi_guarantee(state, scale_factors, 0.0)


class DChiImportanceMechanism(DChiMechanism):
    """``dchi_importance``: clip to C, add d_chi noise of scale Delta / (eta * w_i)."""

    config_class = cfg.DChiImportanceConfig

    def _scale(self, mask, context, dim):
        return self._importance_scale(mask, context, dim)  # (n,)


class Opt3Mechanism(Mechanism):
    """``opt3``: clip to C, add the deterministic OPT-3 shift delta* (no formal guarantee)."""

    config_class = cfg.Opt3Config

    def _eps(self, mask, context, state):
        return state.eps_local

    def _perturb_tokens(self, h, mask, context, generator):
        state = self._state(context, "eps_local")
        h = self._clip(h, state)
        return h + self._opt3(h, mask, context, self._eps(mask, context, state))

    def _guarantee(self, state, scale_factors):
        return "none: a deterministic shift with ||delta|| <= eps_local; no formal privacy guarantee"


class Opt3ImportanceMechanism(Opt3Mechanism):
    """``opt3_importance``: OPT-3 with per-token budget eps_local / w_i (important tokens move less)."""

    config_class = cfg.Opt3ImportanceConfig

    def _eps(self, mask, context, state):
        return state.eps_local / self._weights(mask, context)  # (n,)


class PrivTuneMechanism(Mechanism):
    """``privtune`` (eq. 26): clip, z_i = delta*_i + d_chi noise of scale Delta / (eta * w_i)."""

    config_class = cfg.PrivTuneConfig

    def _perturb_tokens(self, h, mask, context, generator):
        state = self._state(context, "sensitivity", "eps_local")
        h = self._clip(h, state)
        delta = self._opt3(h, mask, context, state.eps_local)
        return h + delta + self._noise(h, mask, context, generator)

    def _scale(self, mask, context, dim):
        return self._importance_scale(mask, context, dim)  # (n,)

    def _guarantee(self, state, scale_factors):
        return self._dchi_guarantee(state, scale_factors, 0.0 if state is None else state.eps_local or 0.0)
