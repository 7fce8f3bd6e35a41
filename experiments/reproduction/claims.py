"""The paper's sensitivity claims, and whether a sweep's finished points bear each out."""

from __future__ import annotations

from typing import NamedTuple

from experiments.markdown import relative_gap, seed_list
from experiments.reproduction.plan import SWEEPS
from experiments.reproduction.summary import sweep_scores
from mqsa_jax.evaluation import SELECTION_METRIC as SELECTION

# A claim is judged once this many of its sweep's points have finished: the reference point and
# three others (issue 16's minimum); until every point has, the verdict says it is provisional.
MIN_CLAIM_POINTS = 4
# The paper's sensitivity claims: each as the paper words it, the range its best point must lie
# in (the best by test NDCG@20 on the seeds every finished point shares), and the points that
# must fall clearly below that best (each compared with it on every seed the two share: the
# reference point reuses a variant's three seeds, so a point rerun on all of them is judged on
# three).  A claim is not judged before those points have finished.
CLEAR_DROP = 0.02  # "drops clearly": this far or further below the best, relative to it
CLAIMS = {
    "L": ("L works best between 2 and 4", lambda best: 2 <= best <= 4, ()),
    "alpha": ("alpha near 0.5 is best (0.3 to 0.7)", lambda best: 0.3 <= best <= 0.7, ()),
    "lambda_kd": ("lambda_kd near 0.1 is best (0.05 to 0.5), and 0 drops clearly "
                  f"({100 * CLEAR_DROP:g}% or more below the best)",
                  lambda best: 0.05 <= best <= 0.5, (0.0,)),
    "tau": ("tau 0.05 or 0.1 is best", lambda best: best in (0.05, 0.1), ()),
}


class Drop(NamedTuple):
    """A point the claim says falls clearly below the best, compared with it on the seeds the two
    share (``seeds``), which may be more than every finished point shares."""
    value: float
    seeds: list[str]
    score: float
    best_score: float

    @property
    def clear(self) -> bool:
        return self.score <= (1 - CLEAR_DROP) * self.best_score


class ClaimVerdict(NamedTuple):
    """A sweep's verdict on the paper's claim, with the figures it was judged on."""
    holds: bool
    provisional: bool  # not every planned point has finished
    seeds: list[str]  # the seeds every finished point has
    scores: dict[float, float]  # value -> test NDCG@20 on those seeds
    best: float
    drops: list[Drop]  # the points the claim says fall clearly below the best

    @property
    def wording(self) -> str:
        return "holds" if self.holds else "does not hold"


def claim_verdict(param: str, points: dict) -> ClaimVerdict | None:
    """Whether the paper's claim about ``param`` holds on the finished points, as :data:`CLAIMS`
    decides it, and whether that is provisional (not every point finished); None until
    :data:`MIN_CLAIM_POINTS` of them, and those it needs, have finished."""
    seeds, scores = sweep_scores(points)
    _, in_range, must_drop = CLAIMS[param]
    if len(scores) < MIN_CLAIM_POINTS or any(v not in scores for v in must_drop):
        return None
    best = max(scores, key=scores.get)
    drops = []
    for value in must_drop:
        pair_seeds, pair = sweep_scores({v: g for v, g in points.items()
                                         if float(v) in (value, best)})
        drops.append(Drop(value, pair_seeds, pair[value], pair[best]))
    return ClaimVerdict(in_range(best) and all(d.clear for d in drops),
                        len(scores) < len(SWEEPS[param]), seeds, scores, best, drops)


def claim_line(param: str, points: dict) -> str | None:
    """:func:`claim_verdict` as a sentence, with the figures it was judged on."""
    if (verdict := claim_verdict(param, points)) is None:
        return None
    text = CLAIMS[param][0]
    scores, best = verdict.scores, verdict.best
    partial = (f"; provisional: {len(scores)} of its {len(SWEEPS[param])} points have finished"
               if verdict.provisional else "")
    # The points that must drop are shown too, so that a verdict says why; where they were
    # compared with the best on more seeds than every point shares, beside those seeds' figure.
    others = ""
    for d in (d for d in verdict.drops if d.value != best):
        common = f"{scores[d.value]:.4f}, {relative_gap(scores[d.value], scores[best])}"
        others += f"; {param} = {d.value:g}: " + (
            common if d.seeds == verdict.seeds else
            f"{d.score:.4f} against {d.best_score:.4f} on {seed_list(d.seeds)}, which both "
            f"finished, {relative_gap(d.score, d.best_score)} (on {seed_list(verdict.seeds)}: "
            f"{common})")
    return (f"The paper's claim, {text}: {verdict.wording} "
            f"here (best test {SELECTION} on {seed_list(verdict.seeds)} at {param} = {best:g}, "
            f"{scores[best]:.4f}{others}{partial}).")
