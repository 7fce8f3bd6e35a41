"""The paper's figures, and the reproduction's verdict against them."""

from __future__ import annotations

import json

from experiments.markdown import relative_gap, seed_list
from experiments.reproduction.plan import HERE, PLANNED, VARIANTS

PAPER = json.loads((HERE / "reference" / "paper_results.json").read_text())
# The bar of the reproduction (issue 42): MQSA-TED's test NDCG@5, at the epoch chosen on
# validation and over its planned seeds, no more than this far below the paper's, or above it.
PAPER_METRIC, PAPER_SHORTFALL = "NDCG@5", 0.03
PAPER_BAR = f"the bar: no more than {PAPER_SHORTFALL:.0%} below it"  # as the reports word it


def paper_verdicts(groups: dict, dataset: str, planned: dict = PLANNED) -> list[str]:
    """MQSA-TED's test NDCG@5 against the paper's, with the reference config and tuned: one
    phrase per variant that has run or is planned (its mean, its gap, whether it is within the
    bar, on which seeds; "provisional" until every planned seed has finished), or none where the
    paper gives no figure."""
    paper = PAPER["mqsa_ted"].get(dataset, {}).get(PAPER_METRIC)
    if paper is None:
        return []
    phrases = []
    for variant in ("mqsa_ted", "mqsa_ted_tuned"):
        wanted = planned.get(dataset, {}).get(variant, ())
        if variant not in groups and not wanted:
            continue
        if not (seeds := groups.get(variant, {}).get("seeds")):
            phrases.append(f"{VARIANTS[variant]}: pending")
            continue
        mean = groups[variant]["test"][PAPER_METRIC]["mean"]
        within = mean >= (1 - PAPER_SHORTFALL) * paper
        missing = [s for s in wanted if s not in seeds]
        phrases.append(
            f"{VARIANTS[variant]} {mean:.4f} ({relative_gap(mean, paper)}), "
            f"{'within' if within else 'not within'} on {seed_list(seeds)}"
            + (f", provisional ({len(wanted) - len(missing)} of its {len(wanted)} planned seeds)"
               if missing else ""))
    return phrases


def paper_verdict_line(groups: dict, dataset: str, planned: dict = PLANNED) -> str | None:
    """:func:`paper_verdicts` as the summary's sentence, with the paper's figure and the bar."""
    if not (phrases := paper_verdicts(groups, dataset, planned)):
        return None
    paper = PAPER["mqsa_ted"][dataset][PAPER_METRIC]
    return (f"Verdict against the paper's MQSA-TED test {PAPER_METRIC}, {paper:.4f} "
            f"({PAPER_BAR}): {'; '.join(phrases)}.")
