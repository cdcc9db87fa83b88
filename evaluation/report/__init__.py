"""Turn result rows (JSON lines from ``evaluation.sweep``) into ``docs/RESULTS.md`` tables and PNG plots.

    python -m evaluation.report results.jsonl [more.jsonl ...] --out docs/RESULTS.md

Tables follow the paper's shapes: III (ASR and utility per eta), IV (per split depth), V (per hop
count, and the mechanism ablation), plus the attribute attacks on the mixed-domain datasets. Every
ASR cell is "naive / adaptive" (both threat models, always), every table has a chance row and an
undefended row (the same attacks on mechanism ``none``). Rows are grouped by *setting* (data sizes,
epochs, attack budget, ...) so quick and full runs are never mixed in one table.

A block between ``<!-- notes:start -->`` and ``<!-- notes:end -->`` in an existing output file is
kept verbatim when the file is regenerated (hand-written analysis survives a re-run).
Beside them: the best-response figures per dataset (``splits``: strongest token ASR split by exposed /
buried tokens and by content / function / punctuation, ASR against the number of views, exposure
detection accuracy, precision on confident tokens; absent for rows that lack those details) and, across
settings, the configurations run with several seeds (``seeds``: mean and 95% t-interval over seeds).

Modules: ``queries`` (load, group, select rows; find attack entries), ``tables`` (the Markdown
tables), ``paper`` (the paper's numbers and the comparison tables), ``splits`` and ``seeds`` (above),
``plots`` (PNG), ``document`` (``render``: the whole page, the method text, the kept notes) and ``cli``
(``main``).
"""

from evaluation.report.cli import main
from evaluation.report.document import METHOD_TEXT, NOTES_END, NOTES_START, render, setting_name
from evaluation.report.paper import PAPER_HEADLINE, PAPER_TABLE_III, headline_table, paper_table
from evaluation.report.plots import plot_eta, plot_privacy_utility
from evaluation.report.queries import (
    ABLATION_ORDER,
    ATTRIBUTE_ATTACKS,
    LABEL_ATTACKS,
    NOISE_MECHANISMS,
    THREATS,
    TOKEN_ATTACKS,
    OperatingPoint,
    accuracy,
    attack,
    is_variant,
    load_rows,
    operating_points,
    pick,
    setting_of,
    strongest,
)
from evaluation.report.seeds import SeedGroup, mean_ci, seed_groups, seeds_table, t_quantile
from evaluation.report.splits import confidence_table, exposure_table, token_split_table, views_table
from evaluation.report.tables import (
    ablation_table,
    attribute_table,
    chance_cell,
    eta_table,
    hops_table,
    pair,
    pct,
    split_table,
    variants_table,
)

__all__ = [
    "ABLATION_ORDER",
    "ATTRIBUTE_ATTACKS",
    "LABEL_ATTACKS",
    "METHOD_TEXT",
    "NOISE_MECHANISMS",
    "NOTES_END",
    "NOTES_START",
    "PAPER_HEADLINE",
    "PAPER_TABLE_III",
    "THREATS",
    "TOKEN_ATTACKS",
    "OperatingPoint",
    "SeedGroup",
    "ablation_table",
    "accuracy",
    "attack",
    "attribute_table",
    "chance_cell",
    "confidence_table",
    "eta_table",
    "exposure_table",
    "headline_table",
    "hops_table",
    "is_variant",
    "load_rows",
    "main",
    "mean_ci",
    "operating_points",
    "paper_table",
    "pct",
    "pair",
    "pick",
    "plot_eta",
    "plot_privacy_utility",
    "render",
    "seed_groups",
    "seeds_table",
    "setting_name",
    "setting_of",
    "split_table",
    "strongest",
    "t_quantile",
    "token_split_table",
    "variants_table",
    "views_table",
]
