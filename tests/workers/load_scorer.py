"""Loads an exported scorer with jax and numpy alone, as a serving process would, and prints
the top-k item ids of each history in HISTORIES_JSON (lists of item indices, oldest first).

    python tests/workers/load_scorer.py EXPORT_DIR HISTORIES_JSON
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np

folder, histories = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
spec = json.loads((folder / "scorer.json").read_text())
item_ids = json.loads((folder / spec["item_ids"]).read_text())
scorer = jax.export.deserialize(bytearray((folder / spec["file"]).read_bytes()))
pad, width = spec["padding_id"], max(map(len, histories))
inputs = np.full((len(histories), spec["max_len"]), pad, np.int32)
exclude = np.full((len(histories), width), pad, np.int32)
for row, history in enumerate(histories):
    tail = history[-spec["max_len"]:]
    inputs[row, len(inputs[row]) - len(tail):] = tail
    exclude[row, :len(history)] = history
scores, indices = scorer.call(inputs, exclude)
items = [[item_ids[i] for i, s in zip(row, row_scores) if np.isfinite(s)]
         for row, row_scores in zip(np.asarray(indices), np.asarray(scores))]
print(json.dumps({"items": items, "mqsa_jax_imported": "mqsa_jax" in sys.modules}))
