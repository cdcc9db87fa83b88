"""On-device privacy audit: run the cheap inversion attacks on your own data before anything is sent.

``privacy_audit(privatizer, texts)`` measures how many of your tokens an attacker who holds the bottom
model recovers from what the SDK would send (``Privatizer.privatize``, ``views`` times per text, the
views a server links and averages), with three attacks:

- **A2, nearest prototype** (``nearest_prototype``): token = argmax_v cos(h~_i, p_v) over the bottom's
  split-layer token prototypes p_v (the whole vocabulary).
- **A0, learned inversion, adaptive** (``TokenDiscriminant``): a linear discriminant (class-conditional
  Gaussians with one shared, shrunk covariance; method.md section 8) fitted on *public* text passed
  through the same mechanism with the same parameters (Kerckhoffs): class means from the mechanism's
  noiseless output (``expected_privatizer``), covariance from its noisy output. Its classes are the
  tokens seen in the public text plus, as a fallback, every other vocabulary token centred on its
  prototype's noiseless output (``coverage`` says how many scored tokens were seen in public text).

- **A0-bayes, adaptive** (the best response below): each position's noise level read from its norm,
  then the per-level Bayes decoder.

All attacks score top-1 recovery over real, non-special tokens; ``chance`` is the rate of the most
frequent scored token (a majority guesser). The report also gives the *undefended* ASR (the same
attacks on the clean representations), each attack's ASR by token class (content / function /
punctuation) and by exposed / buried tokens (``AttackScore.groups``), ``max_asr`` over the attacks and
``worst_asr``: the worst of the overall, content-word and exposed-token rates, which ``search_eta``
(``PrivacyConfig(target_asr=...)``) holds to the target.

**Best response** (method.md section 9; ``_best_response``, used by the evaluation's A0-bayes,
A0-multiview, A0-context and A3): ``ExposureDetector`` reads each position's noise level from the
norm of what was received (one Gaussian per known level on log ||h~||, fitted on public text whose
levels are known from ``Privatizer.token_noise_scale``); ``LevelBayesDecoder`` decodes each token
with class means from the mechanism's noiseless output, a pooled (or per-class) within-class spread
plus the noise variance of the position's level (``noise_variance``: 2 b^2 Laplace, b^2 Gaussian,
(d + 1) b^2 d_chi l2) and a log-frequency prior, blockwise over the vocabulary, with its posterior
confidence; ``average_views`` averages K linked views of a text (noise variance / K distinct views;
``distinct_views`` counts them, so identical re-sends count once).

``search_eta(factory, texts, target_asr)`` audits privatizers built for a grid of eta values and picks
the largest eta (least noise) whose audited ``max_asr`` meets the target.

The evaluation package reuses ``nearest_prototype``, ``prototype_shortlist``, ``TokenDiscriminant`` and
the noiseless twin of a mechanism; this package depends only on torch and the SDK.

Modules (private; everything public is re-exported here):

- ``_attacks``: the attack math (``majority_rate``, ``prototype_shortlist``, ``nearest_prototype``,
  ``TokenDiscriminant``), pure functions on tensors;
- ``_best_response``: the best-response math (``NOISE_KINDS``, ``noise_kind``, ``noise_variance``, ``average_views``,
  ``distinct_views``, ``ExposureDetector``, ``LevelBayesDecoder``), pure functions on tensors;
- ``_expected``: the mechanism's deterministic part (``noiseless_mechanism``, ``expected_privatizer``,
  ``expected_lone_tokens``);
- ``_audit``: the audit (``AttackScore``, ``AuditReport``, ``privacy_audit``);
- ``_eta``: the eta search (``DEFAULT_ETAS``, ``EtaPoint``, ``EtaSearchResult``, ``search_eta``).
"""

from ._attacks import TokenDiscriminant, majority_rate, nearest_prototype, prototype_shortlist
from ._audit import AttackScore, AuditReport, privacy_audit
from ._best_response import (
    NOISE_KINDS,
    ExposureDetector,
    LevelBayesDecoder,
    average_views,
    distinct_views,
    noise_kind,
    noise_variance,
)
from ._eta import DEFAULT_ETAS, EtaPoint, EtaSearchResult, search_eta
from ._expected import expected_lone_tokens, expected_privatizer, noiseless_mechanism

__all__ = [
    "DEFAULT_ETAS",
    "NOISE_KINDS",
    "AttackScore",
    "AuditReport",
    "EtaPoint",
    "EtaSearchResult",
    "ExposureDetector",
    "LevelBayesDecoder",
    "TokenDiscriminant",
    "average_views",
    "distinct_views",
    "expected_lone_tokens",
    "expected_privatizer",
    "majority_rate",
    "nearest_prototype",
    "noise_kind",
    "noise_variance",
    "noiseless_mechanism",
    "privacy_audit",
    "prototype_shortlist",
    "search_eta",
]
