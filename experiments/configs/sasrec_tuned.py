"""SASRec with the dropout, L2 and learning rate its search on validation found for the
dataset (issue 42, ``tuned.py``), over the reference config; the same search budget as the
other model's.
Usage: mqsa-jax train --config experiments/configs/sasrec_tuned.py:yelp
"""

from sasrec import get_config as reference_config
from tuned import tuned_values


def get_config(dataset: str = "yelp") -> dict:
    return {**reference_config(dataset), **tuned_values(dataset, "sasrec")}
