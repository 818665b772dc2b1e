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


def vectors_to_numpy(column: pa.Array | pa.ChunkedArray, order: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(matrix of the non-null rows as float32, boolean mask of the rows that are non-null).

    The matrix is one writable copy, filled chunk by chunk (no combined copy of the column);
    with `order` (a permutation of the rows, all non-null) row j of the matrix is row order[j]."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    typ = column.type
    if not (pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ)):
        raise TypeError(f"an embedding column must be a list of floats, got {typ}")
    valid = np.concatenate([np.asarray(c.is_valid().to_numpy(zero_copy_only=False), dtype=bool) for c in chunks]
                           ) if chunks else np.zeros(0, dtype=bool)
    kept = [c.filter(c.is_valid()) if c.null_count else c for c in chunks]
    n = int(valid.sum())
    if pa.types.is_fixed_size_list(typ):
        d = typ.list_size
    else:
        lengths = np.concatenate([np.asarray(c.value_lengths().to_numpy(zero_copy_only=False)) for c in kept if len(c)]
                                 ) if n else np.zeros(0, dtype=np.int64)
        if len(lengths) and lengths.min() != lengths.max():
            raise ValueError("embedding vectors differ in length")
        d = int(lengths[0]) if len(lengths) else 0
    if order is not None and (len(order) != n or n != len(valid)):
        raise ValueError("order must be a permutation of the rows, all of them non-null")
    where = np.empty(n, dtype=np.int64)
    if order is not None:
        where[order] = np.arange(n)
    else:
        where = np.arange(n)
    out = np.empty((n, d), dtype=np.float32)
    start = 0
    for c in kept:
        if not len(c):
            continue
        block = c.flatten().to_numpy(zero_copy_only=False).reshape(len(c), d)
        out[where[start:start + len(c)]] = block
        start += len(c)
    return out, valid


def embedding_matrix(table: pa.Table, column: str, order: np.ndarray | None = None) -> np.ndarray:
    """An embedding column of `table` as an (n, d) float32 matrix (rows in `order` when given);
    nulls are an error."""
    if column not in table.column_names:
        raise KeyError(f"embedding column {column!r} not found; available: {sorted(table.column_names)}")
    col = table.column(column)
    if col.null_count:
        raise ValueError(f"embedding column {column!r} has {col.null_count} nulls")
    try:
        return vectors_to_numpy(col, order)[0]
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"embedding column {column!r}: {exc}") from None
