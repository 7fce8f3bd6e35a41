"""MQSA-TED with the dropout, L2, learning rate, lambda_kd and tau its search on validation
found for the dataset (issue 42, ``tuned.py``), over the reference config; the same search
budget as SASRec's.
Usage: mqsa-jax train --config experiments/configs/mqsa_ted_tuned.py:yelp
"""

from mqsa_ted import get_config as reference_config
from tuned import tuned_values


def get_config(dataset: str = "yelp") -> dict:
    return {**reference_config(dataset), **tuned_values(dataset, "mqsa_ted")}
