"""MQSA-TED with the release's hyperparameters (reference, section Hyperparameters).

Per-dataset values are not published; the paper reports L 2-4, alpha about 0.5, lambda_kd about
0.1 and tau 0.05-0.1 as best, and the release's one command (beauty) is used for all four.
Usage: mqsa-jax train --config experiments/configs/mqsa_ted.py:beauty
"""

REFERENCE = dict(
    max_len=50, hidden=64, num_blocks=1, num_heads=1, dropout=0.5,
    windows=(1, 3), window_weights=(0.5, 0.5),  # L = 3, alpha = 0.5
    lambda_kd=0.1, tau=0.1, time_span=1, l2_reg=1e-4,
    learning_rate=1e-3, batch_size=256, epochs=200, seed=2023,
)

PER_DATASET = {"beauty": {}, "sports": {}, "toys": {}, "yelp": {}}


def get_config(dataset: str = "beauty") -> dict:
    return {**REFERENCE, "dataset": dataset, **PER_DATASET.get(dataset, {})}
