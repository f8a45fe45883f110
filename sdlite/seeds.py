"""Seeds derived from integers, the same on every machine and process: what makes data order, augmentation
and noise reproducible without hidden RNG state.
"""

from __future__ import annotations

import hashlib
import json


def mix(*numbers: int) -> int:
    """A 63-bit seed from integers: well spread, and the same on every machine and process."""
    digest = hashlib.sha256(json.dumps(numbers).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
