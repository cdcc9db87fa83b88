"""The mechanism's deterministic part: what the adaptive attacker expects to observe on average.

Promises: ``noiseless_mechanism`` is the same mechanism with its noise scaled to ~0 (clipping, the OPT-3
shift and importance unchanged); ``expected_privatizer`` and ``expected_lone_tokens`` apply it to texts
and to lone prototypes, sharing the victim's bottom, tokenizer and fitted state (nothing is refitted).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..privacy import Mechanism, PerturbContext, PreparedState, mechanism_from_config
from ..privacy.config import DChiOptions
from ..privatizer import Privatizer

__all__ = ["expected_lone_tokens", "expected_privatizer", "noiseless_mechanism"]

_NOISELESS = 1e-12  # noise scale factor of the noiseless twin


def noiseless_mechanism(mechanism: Mechanism) -> Mechanism:
    """The same mechanism with its noise scaled by 1e-12: clipping, the OPT-3 shift and importance
    unchanged, so its output is the mechanism's deterministic part (the mean of the noisy output)."""
    config = mechanism.config
    if not mechanism.uses_noise:
        return mechanism
    if isinstance(config, DChiOptions):
        floor = {"noise_floor": 0.0} if hasattr(config, "noise_floor") else {}  # the floor is noise too
        return mechanism_from_config(replace(config, eta=config.eta / _NOISELESS, **floor))
    return mechanism_from_config(replace(config, noise_multiplier=config.noise_multiplier * _NOISELESS))


def expected_privatizer(privatizer: Privatizer) -> Privatizer:
    """A Privatizer sharing ``privatizer``'s bottom, tokenizer and fitted state whose mechanism is
    ``noiseless_mechanism(privatizer.mechanism)``: its ``privatize`` gives the expected output."""
    return Privatizer(
        privatizer.bottom,
        privatizer.tokenizer,
        noiseless_mechanism(privatizer.mechanism),
        state=privatizer.state,
        max_length=privatizer.max_length,
    )


@torch.no_grad()
def expected_lone_tokens(privatizer: Privatizer, prototypes: torch.Tensor, block_size: int = 4096) -> torch.Tensor:
    """The mechanism's deterministic output for each prototype (|V|, d) taken as a lone token (its own
    id; importance from the state's table, else w = 1): (|V|, d). For noise-only mechanisms, clipping."""
    mechanism = noiseless_mechanism(privatizer.mechanism)
    state = privatizer.state or PreparedState()
    table = state.importance_table
    g = torch.Generator().manual_seed(0)
    out = []
    for s in range(0, prototypes.shape[0], block_size):
        h = prototypes[s : s + block_size].detach().float().unsqueeze(1)  # (b, 1, d)
        ids = torch.arange(s, s + h.shape[0]).unsqueeze(1)  # (b, 1)
        importance = None
        if mechanism.uses_importance:
            importance = table[ids] if table is not None else torch.zeros(ids.shape)
        context = PerturbContext(state=state, input_ids=ids, importance=importance)
        out.append(mechanism.perturb(h, torch.ones(ids.shape, dtype=torch.long), context, g)[:, 0])
    return torch.cat(out)
