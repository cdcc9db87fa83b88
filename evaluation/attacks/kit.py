"""The attacker's resources (``AttackKit``) and the helpers that turn texts into observations.

``AttackKit.from_privatizer(privatizer, public_texts, ...)`` gives the white-box attacker: the bottom
model, tokenizer, split-layer prototypes and input embeddings, public (shadow) text with its
attributes and task labels, the server's top model (its output is the pooled representation the
device's head classifies; the server never holds that head), and, for the
adaptive attacker, the victim's mechanism applied to public text (``privatize_public``) and a model
of that mechanism (``KnownMechanism``). Public representations are computed once per threat model
with the kit's own seed, so results do not depend on the order in which attacks run.

The adaptive attacker knows the mechanism and its parameters but not the victim's data: by default
(``refit=True``) the kit fits a *shadow* ``Privatizer`` with the same mechanism config on the public
texts (and public labels), and everything the adaptive attacker computes on public text (the noisy
and noiseless outputs, the per-position noise scales, the lone-token prototypes, ``known``) comes from
that shadow. ``refit=False`` hands the attacker the victim's fitted state instead (the old, stronger
than Kerckhoffs assumption). Best-response helpers (method.md section 9): ``public_noise_scale``
(the true noise scale of every public position), ``sample_public`` (fresh noise on the noiseless
public output), ``exposure_detector`` and ``bayes_decoder`` (``client_sdk.audit``), all cached.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from client_sdk.audit import (
    ExposureDetector,
    LevelBayesDecoder,
    expected_lone_tokens,
    expected_privatizer,
    noise_kind,
    noiseless_mechanism,
)
from client_sdk.privacy import PerturbContext, PreparedState, clip_by_norm
from client_sdk.privacy.config import ClipOptions
from client_sdk.privacy.dchi import sample_gaussian, sample_l1, sample_l2

from .base import AttackUnavailable, Observation, check_threat_models
from .gradients import _device, head_gradients, observe_gradients, step_sizes, top_mode, top_output

__all__ = [
    "AttackKit",
    "KnownMechanism",
    "head_gradients",
    "observe",
    "observe_gradients",
    "shadow_privatizer",
    "step_sizes",
    "token_noise_scale",
    "top_mode",
    "top_output",
]  # the server-side helpers live in .gradients (re-exported here)

Encode = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]
Run = Callable[[list[str], torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def _represent(
    texts: Sequence[str], encode: Encode, run: Run, special_ids: Sequence[int], batch_size: int
) -> Observation:
    """Tokenise ``texts`` together (one T) and fill (N, T, d) with ``run`` on batches of ``batch_size``."""
    texts = list(texts)
    input_ids, mask = encode(texts)  # (n, t)
    hidden = None
    for start in range(0, len(texts), batch_size):
        rows = slice(start, start + batch_size)
        t_b = int(mask[rows].sum(dim=1).max())
        out = run(texts[rows], input_ids[rows, :t_b], mask[rows, :t_b]).float().cpu()  # (b, t_b', d)
        if hidden is None:
            hidden = torch.zeros(len(texts), input_ids.shape[1], out.shape[-1])
        hidden[rows, : out.shape[1]] = out
    special = torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype)) | ~mask.bool()
    return Observation(hidden, mask.long(), input_ids.long(), special)


def observe(
    privatizer: Any,
    texts: Sequence[str],
    *,
    attributes: Sequence[int] | torch.Tensor | None = None,
    labels: Sequence[int] | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 32,
) -> Observation:
    """What the server sees when the device sends ``texts`` through ``privatizer`` (no gradients).

    ``privatize`` runs on batches of ``batch_size`` (as the device would); the result is right-padded to
    one T. ``attributes`` / ``labels`` (one int per text) are stored for scoring only.
    """
    run = lambda batch, ids, mask: privatizer.privatize(batch, generator=generator)["hidden"]
    obs = _represent(texts, privatizer.encode, run, privatizer.special_ids, batch_size)
    as_long = lambda v: None if v is None else torch.as_tensor(v, dtype=torch.long)
    return replace(obs, attribute=as_long(attributes), labels=as_long(labels))


@torch.no_grad()
def token_noise_scale(privatizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) float32 on the CPU: the per-coordinate noise scale ``privatizer`` gives each real position
    (``Privatizer.token_noise_scale``: the Laplace b for d_chi l1, the d_chi l2 scale, the Gaussian std;
    0 at padding and without noise)."""
    if not privatizer.mechanism.uses_noise:
        return torch.zeros(input_ids.shape, dtype=torch.float32)
    return privatizer.token_noise_scale(input_ids, attention_mask).detach().float().cpu()


def shadow_privatizer(
    privatizer: Any,
    public_texts: Sequence[str],
    public_labels: torch.Tensor | None = None,
    *,
    prototypes: torch.Tensor | None = None,
    seed: int = 0,
) -> Any:
    """A ``Privatizer`` with ``privatizer``'s bottom, tokenizer and mechanism config, fitted on the public
    texts (what the Kerckhoffs attacker can build): the importance table from ``public_labels`` when the
    victim's state has one (else importance from attention, as the victim then does), clip norm and
    OPT-3 constraints from the public sample. The neighbour index depends on the model alone, so the
    victim's is reused (no |V|^2 rebuild). A per-text noise key is derived from ``seed``."""
    from client_sdk.privatizer import Privatizer

    mech = privatizer.mechanism
    shadow = Privatizer(privatizer.bottom, privatizer.tokenizer, mech, max_length=privatizer.max_length)
    if mech.name == "none":
        return shadow
    victim = privatizer.state
    labels = public_labels if victim is not None and victim.importance_table is not None else None
    neighbours = getattr(victim, "neighbours", None)
    with tempfile.TemporaryDirectory() as tmp:
        options: dict[str, Any] = {}
        if neighbours is not None:
            neighbours.save(tmp)
            options = {"cache_dir": tmp, "model_id": neighbours.model_id}
        shadow.fit(
            list(public_texts), labels, generator=torch.Generator().manual_seed(seed), prototypes=prototypes, **options
        )
    if getattr(shadow.state, "noise_secret", None) is not None:
        secret = hashlib.sha256(f"privtune-shadow-{seed}".encode()).hexdigest()
        shadow.state = replace(shadow.state, noise_secret=secret)
    return shadow


class KnownMechanism:
    """The adaptive attacker's model of the victim's mechanism (Kerckhoffs: config and fitted state known).

    Deterministic part: the mechanism with its noise scaled to ~0 (``client_sdk.audit.noiseless_mechanism``):
    clipping to C and, for OPT-3 mechanisms, the shift delta*. ``noise``: 'none', 'gaussian', 'laplace'
    (d_chi, metric l1) or 'l2' (d_chi, metric l2), which sets the likelihood in ``distance``. When the
    shift depends on importance (opt3_importance) it uses the state's classification table, else the
    bottom's attentions on the given tokens, else w = 1.
    """

    def __init__(self, privatizer: Any) -> None:
        mech, state = privatizer.mechanism, privatizer.state
        self.privatizer, self.name = privatizer, mech.name
        self.twin = noiseless_mechanism(mech)
        self.state = state or PreparedState()
        self.special_ids = torch.tensor(tuple(privatizer.special_ids), dtype=torch.long)
        self.clip_norm = self.state.clip_norm if isinstance(mech.config, ClipOptions) else None
        self.has_shift = bool(mech.uses_opt3)
        self._shift_needs_importance = mech.uses_importance and not mech.uses_noise  # opt3_importance
        self.noise = noise_kind(mech)

    def clip(self, hidden: torch.Tensor) -> torch.Tensor:
        """Clip to C along the last axis (differentiable); identity without a clip norm."""
        return hidden if self.clip_norm is None else clip_by_norm(hidden, self.clip_norm)

    def _importance(self, hidden: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor, use_attention: bool):
        if not self.twin.uses_importance:
            return None
        if self.state.importance_table is not None:
            return self.privatizer.token_importance(ids, mask)  # (b, t)
        if self._shift_needs_importance and use_attention:
            out = self.privatizer.bottom(ids, mask, output_attentions=True)
            return self.privatizer.token_importance(ids, mask, out.attentions)
        return torch.zeros(ids.shape, device=hidden.device)  # w = 1 (sigmoid map); only the noise uses it otherwise

    @torch.no_grad()
    def shift(
        self, hidden: torch.Tensor, mask: torch.Tensor, input_ids: torch.Tensor, use_attention: bool = True
    ) -> torch.Tensor:
        """delta* (B, T, d) for ``hidden`` (B, T, d) of tokens ``input_ids`` (B, T); zeros without OPT-3."""
        if not self.has_shift:
            return torch.zeros_like(hidden)
        hidden, mask, ids = hidden.detach().float(), mask.to(hidden.device), input_ids.to(hidden.device)
        context = PerturbContext(
            state=self.state, input_ids=ids, importance=self._importance(hidden, mask, ids, use_attention)
        )
        g = torch.Generator(device=hidden.device).manual_seed(0)
        moved = self.twin.perturb(hidden, mask, context, generator=g)  # (b, t, d) = clip(h) + delta
        return (moved - self.clip(hidden)) * mask.unsqueeze(-1)

    def apply(
        self, hidden: torch.Tensor, mask: torch.Tensor, input_ids: torch.Tensor, use_attention: bool = True
    ) -> torch.Tensor:
        """The mechanism's deterministic output clip(h) + delta*(h), differentiable in ``hidden`` through
        the clip (the shift is treated as a constant: straight-through)."""
        out = self.clip(hidden)
        if self.has_shift:
            out = out + self.shift(hidden, mask, input_ids, use_attention).to(out.dtype)
        return out

    def distance(self, predicted: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """Per-token negative log-likelihood of ``observed`` given the noiseless ``predicted`` (..., d) -> (...),
        up to constants and scale: squared L2 (none, gaussian), L1 (laplace) or L2 norm (d_chi l2)."""
        diff = predicted - observed
        if self.noise == "laplace":
            return diff.abs().sum(dim=-1)
        if self.noise == "l2":
            return diff.norm(dim=-1)
        return diff.pow(2).sum(dim=-1)


@dataclass
class AttackKit:
    """Everything the white-box attacker holds besides the observation.

    ``prototypes`` (|V|, d): the bottom's token prototypes; ``embeddings`` (|V|, d_e): its input
    embedding matrix; ``privatize_public(texts, generator=...)`` -> ``{"hidden", ...}``: the victim's
    mechanism applied to public text (adaptive attacker); ``encode(texts)`` -> (ids, mask): the
    victim's tokenisation; ``public_texts`` with ``public_attributes`` / ``public_labels`` (N_pub,)
    ints: shadow data; ``known``: the model of the mechanism; ``top``: the server's top model (output:
    the pooled representation (b, d) on the head-on-device protocol).

    Memo (``cache``): the public observations ``"naive"``, ``"adaptive"`` (noise from ``seed``) and
    ``"expected"`` (noiseless mechanism output), and ``"prototypes_adaptive"``. A caller may seed it
    with the entries that do not depend on the noise level (all but ``"adaptive"``) to share them.
    The best-response entries (``"noise_scale"``, ``"detector"``, ``"bayes_*"``) depend on it.
    ``refit``: True when ``known`` and ``privatize_public`` are a shadow fitted on the public texts.
    """

    bottom: Any
    tokenizer: Any
    prototypes: torch.Tensor
    embeddings: torch.Tensor
    privatize_public: Callable[..., dict[str, torch.Tensor]]
    encode: Encode
    public_texts: tuple[str, ...]
    special_ids: tuple[int, ...]
    known: KnownMechanism
    public_attributes: torch.Tensor | None = None
    public_labels: torch.Tensor | None = None
    top: torch.nn.Module | None = None
    batch_size: int = 32
    seed: int = 0
    refit: bool = False
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_privatizer(
        cls,
        privatizer: Any,
        public_texts: Sequence[str],
        *,
        public_attributes: Sequence[int] | torch.Tensor | None = None,
        public_labels: Sequence[int] | torch.Tensor | None = None,
        top: torch.nn.Module | None = None,
        prototypes: torch.Tensor | None = None,
        seed: int = 0,
        batch_size: int = 32,
        cache: Mapping[str, Any] | None = None,
        refit: bool = True,
    ) -> AttackKit:
        """The kit for attacking ``privatizer``'s output (fitted; its mechanism config is what the adaptive
        attacker knows). ``refit`` (default): the adaptive attacker's mechanism is ``shadow_privatizer``,
        fitted on the public texts with the public labels; False: the victim's own fitted state.
        ``prototypes``: skips recomputing them (one pass over |V|); ``cache``: seeds the memo."""
        bottom = privatizer.bottom
        as_long = lambda v: None if v is None else torch.as_tensor(v, dtype=torch.long)
        prototypes = bottom.token_prototypes() if prototypes is None else prototypes  # (|V|, d)
        prototypes = prototypes.detach().float().cpu()
        labels = as_long(public_labels)
        known = privatizer
        if refit and public_texts:
            known = shadow_privatizer(privatizer, public_texts, labels, prototypes=prototypes, seed=seed)
        return cls(
            bottom=bottom, tokenizer=privatizer.tokenizer, prototypes=prototypes,
            embeddings=bottom.input_embeddings().detach().float(), privatize_public=known.privatize,
            encode=privatizer.encode, public_texts=tuple(public_texts), special_ids=tuple(privatizer.special_ids),
            known=KnownMechanism(known), public_attributes=as_long(public_attributes),
            public_labels=labels, top=top, batch_size=batch_size, seed=seed, refit=known is not privatizer,
            cache=dict(cache or {}),
        )  # fmt: skip

    @property
    def device(self) -> torch.device:
        return _device(self.bottom)

    def public(self, threat_model: str) -> Observation:
        """Shadow representations of the public texts: clean bottom outputs ("naive") or the victim's
        mechanism applied to them ("adaptive", noise drawn from the kit's seed); cached."""
        (threat_model,) = check_threat_models(threat_model)
        if threat_model == "naive":
            device = self.device
            return self._public("naive", lambda batch, ids, mask: self.bottom(ids.to(device), mask.to(device)).hidden)
        g = torch.Generator().manual_seed(self.seed)
        return self._public("adaptive", lambda batch, ids, mask: self.privatize_public(batch, generator=g)["hidden"])

    def public_expected(self) -> Observation:
        """The mechanism's noiseless output on the public texts (what the adaptive attacker expects on
        average; ``client_sdk.audit.expected_privatizer``); cached."""
        twin = expected_privatizer(self.known.privatizer)
        g = torch.Generator().manual_seed(self.seed)
        return self._public("expected", lambda batch, ids, mask: twin.privatize(batch, generator=g)["hidden"])

    def _public(self, key: str, run: Run) -> Observation:
        if key not in self.cache:
            if not self.public_texts:
                raise AttackUnavailable("the kit has no public texts")
            obs = _represent(self.public_texts, self.encode, run, self.special_ids, self.batch_size)
            self.cache[key] = replace(obs, attribute=self.public_attributes, labels=self.public_labels)
        return self.cache[key]

    def attack_prototypes(self, threat_model: str) -> torch.Tensor:
        """(|V|, d) prototypes as the attacker expects to observe each token: raw ("naive"), or the
        mechanism's noiseless output for each prototype as a lone token ("adaptive"); cached."""
        (threat_model,) = check_threat_models(threat_model)
        if threat_model == "naive":
            return self.prototypes
        if "prototypes_adaptive" not in self.cache:
            self.cache["prototypes_adaptive"] = expected_lone_tokens(self.known.privatizer, self.prototypes)
        return self.cache["prototypes_adaptive"]

    # ---- best response (method.md section 9) ----------------------------------------------------

    def public_noise_scale(self) -> torch.Tensor:
        """(N_pub, T_pub) the true per-coordinate noise scale the (shadow) mechanism gives each public
        position (aligned with ``public(...)``; 0 at padding and without noise); cached."""
        if "noise_scale" not in self.cache:
            if not self.public_texts:
                raise AttackUnavailable("the kit has no public texts")
            ids, mask = self.encode(list(self.public_texts))  # (n, t)
            out = torch.zeros(ids.shape, dtype=torch.float32)
            for s in range(0, ids.shape[0], self.batch_size):
                rows = slice(s, s + self.batch_size)
                t_b = int(mask[rows].sum(dim=1).max())
                out[rows, :t_b] = token_noise_scale(self.known.privatizer, ids[rows, :t_b], mask[rows, :t_b])
            self.cache["noise_scale"] = out
        return self.cache["noise_scale"]

    @torch.no_grad()
    def sample_public(self, generator: torch.Generator) -> Observation:
        """The public texts through the mechanism with fresh noise from ``generator``: the noiseless
        output (``public_expected``) plus noise of each position's scale (``public_noise_scale``), which
        is how every noise mechanism here composes (deterministic part, then additive noise). Cheap
        (no bottom pass), so a trained attacker can see new noise every epoch."""
        expected = self.public_expected()
        if self.known.noise == "none":
            return expected
        real = expected.attention_mask.bool()  # (n, t)
        scale = self.public_noise_scale()[real]  # (m,)
        d = expected.hidden.shape[-1]
        sampler = {"laplace": sample_l1, "l2": sample_l2, "gaussian": sample_gaussian}[self.known.noise]
        hidden = expected.hidden.clone()
        hidden[real] += sampler((scale.shape[0],), d, scale, generator).to(hidden.dtype)
        return replace(expected, hidden=hidden)

    def exposure_detector(self, reference: bool = False) -> ExposureDetector:
        """The noise-level detector fitted on the adaptive public observation with its true scales
        (``client_sdk.audit.ExposureDetector``; ``reference``: also the distance to the nearest noiseless
        class mean); cached."""
        key = f"detector_{int(reference)}"
        if key not in self.cache:
            public = self.public("adaptive")
            keep = public.scored
            ref = self.bayes_decoder("adaptive").class_means(trained_only=True) if reference else None
            self.cache[key] = ExposureDetector.fit(public.hidden[keep], self.public_noise_scale()[keep], reference=ref)
        return self.cache[key]

    def bayes_decoder(
        self,
        threat_model: str,
        *,
        spread: str = "pooled",
        shrinkage: float = 0.1,
        fallback: bool = True,
        fallback_count: float = 0.5,
    ) -> LevelBayesDecoder:
        """The per-level Bayes token decoder (``client_sdk.audit.LevelBayesDecoder``) of a threat model:
        class means and spread from the clean public states ("naive": noise unknown, so 'none') or from
        the mechanism's noiseless output ("adaptive", with the mechanism's noise kind); with ``fallback``,
        every other vocabulary token at its lone prototype (``attack_prototypes``; adaptive: with the extra
        variance of that approximation); cached per options."""
        (threat_model,) = check_threat_models(threat_model)
        key = f"bayes_{threat_model}_{spread}_{shrinkage}_{fallback}_{fallback_count}"
        if key not in self.cache:
            public = self.public("naive") if threat_model == "naive" else self.public_expected()
            keep = public.scored
            options: dict[str, Any] = {"spread": spread, "shrinkage": shrinkage, "fallback_count": fallback_count}
            if fallback:
                protos = self.attack_prototypes(threat_model)
                options.update(fallback_ids=torch.arange(protos.shape[0]), fallback_means=protos)
            noise = "none" if threat_model == "naive" else self.known.noise
            self.cache[key] = LevelBayesDecoder.fit(
                public.hidden[keep],
                public.input_ids[keep],
                noise=noise,
                fallback_spread=threat_model != "naive",
                **options,
            )  # naive: no noise model, so every class has the same spread (a wider one would win all noisy rows)
        return self.cache[key]
