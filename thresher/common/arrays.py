"""Arrow columns as numpy: a score column as a vector, an embedding column as a matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


def column_numpy(table: pa.Table, name: str, dtype: Any = np.float64) -> np.ndarray:
    """A score column as numpy; a missing column or nulls is a clear error."""
    if name not in table.column_names:
        raise KeyError(f"score column {name!r} not found; available: {sorted(table.column_names)}")
    col = table.column(name)
    if col.null_count:
        raise ValueError(f"score column {name!r} has {col.null_count} nulls; filter them first "
                         f"(filters: [{{column: {name}, op: not_null}}])")
    return col.to_numpy().astype(dtype, copy=False)


def vectors_to_numpy(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(matrix of the non-null rows as float32, boolean mask of the rows that are non-null)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    if not (pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type)
            or pa.types.is_large_list(column.type)):
        raise TypeError(f"an embedding column must be a list of floats, got {column.type}")
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    kept = column.filter(pa.array(valid)) if not valid.all() else column
    if pa.types.is_fixed_size_list(kept.type):
        d = kept.type.list_size
    elif len(kept) == 0:
        d = 0
    else:
        lengths = np.asarray(kept.value_lengths().to_numpy(zero_copy_only=False))
        if lengths.min() != lengths.max():
            raise ValueError("embedding vectors differ in length")
        d = int(lengths[0])
    flat = kept.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(kept), d), valid


def embedding_matrix(table: pa.Table, column: str) -> np.ndarray:
    """An embedding column of `table` as an (n, d) float32 matrix; nulls are an error."""
    if column not in table.column_names:
        raise KeyError(f"embedding column {column!r} not found; available: {sorted(table.column_names)}")
    col = table.column(column)
    if col.null_count:
        raise ValueError(f"embedding column {column!r} has {col.null_count} nulls")
    try:
        return vectors_to_numpy(col)[0]
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"embedding column {column!r}: {exc}") from None
