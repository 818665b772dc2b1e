"""Stable per-document hashes: the same 64-bit value for an id on every machine, engine and run.

Group membership in the distributed select step (which bucket an id is checked for duplicates
in, which block a document is solved in, which rows a bounded sample takes) is a pure function
of (seed, id), so any worker computes it and engines agree. pandas' `hash_array` (SipHash-2-4
over the UTF-8 bytes with a 16-byte key) does it vectorised, about 1.5 M ids per second.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from thresher.common.seeds import derive_seed


def id_hash(ids: pa.Array | pa.ChunkedArray | np.ndarray, seed: int, purpose: int) -> np.ndarray:
    """uint64 hash of each id under (seed, purpose): independent streams for independent uses."""
    values = ids.to_numpy(zero_copy_only=False) if not isinstance(ids, np.ndarray) else ids
    if len(values) == 0:
        return np.zeros(0, dtype=np.uint64)
    key = f"{derive_seed(seed, purpose) & 0xFFFF_FFFF_FFFF_FFFF:016x}"
    return pd.util.hash_array(values.astype(object), hash_key=key, categorize=False)


def hash_unit(h: np.ndarray) -> np.ndarray:
    """The hashes as floats uniform in [0, 1) (top 53 bits: exact in float64)."""
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def hash_group(h: np.ndarray, groups: int) -> np.ndarray:
    """Group number in [0, groups) of each hash (near-equal groups)."""
    return (h % np.uint64(max(1, groups))).astype(np.int64)
