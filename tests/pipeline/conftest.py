"""The tests of `pipeline/` sit in sub-folders mirroring its sub-packages; their shared helpers (`_train_data`,
`_scoring_data`, `_sequence_events`) sit here, on sys.path for all of them."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
