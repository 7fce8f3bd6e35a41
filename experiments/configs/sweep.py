"""The sensitivity sweeps of MQSA-TED: one config per (dataset, parameter, value).

Usage: mqsa-jax train --config experiments/configs/sweep.py:beauty,L=4

``POINTS`` are the values of each parameter: the ranges of the paper's sensitivity study (L 2-4,
alpha about 0.5, lambda_kd about 0.1 and tau 0.05-0.1 best), widened on both sides so that the
optimum is inside the range, and with the two ends the paper names: alpha = 1 is SASRec with TED
(the long branch has no weight, so it is left out) and lambda_kd = 0 is MQSA alone.  Every other
value is the reference's (``mqsa_ted.py``).
"""

from mqsa_ted import get_config as reference

POINTS = {
    "L": (1, 2, 3, 4, 5),
    "alpha": (0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
    "lambda_kd": (0.0, 0.01, 0.05, 0.1, 0.5, 1.0),
    "tau": (0.01, 0.05, 0.1, 0.5, 1.0),
}

# What each swept parameter sets: L is the long query's window, alpha the short branch's weight.
SETS = {
    "L": lambda v: {"windows": (1, int(v))},
    "alpha": lambda v: ({"window_weights": (v, round(1 - v, 6))} if v < 1
                        else {"windows": (1,), "window_weights": (1.0,)}),
    "lambda_kd": lambda v: {"lambda_kd": v},
    "tau": lambda v: {"tau": v},
}


def get_config(arg: str = "beauty,L=3") -> dict:
    dataset, _, point = arg.partition(",")
    param, _, value = point.partition("=")
    if param not in SETS:
        raise ValueError(f"expected DATASET,PARAM=VALUE with PARAM one of {', '.join(SETS)}")
    return {**reference(dataset), **SETS[param](float(value))}
