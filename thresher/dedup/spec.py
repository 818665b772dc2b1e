"""The `dedup:` job section: exact and MinHash-LSH near-duplicate removal before the filters and
the selector. Unset (the default), a job has no dedup stage and its hashes are what they were."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from thresher.specs import Strict


class MinHashSpec(Strict):
    """Near-duplicates by MinHash LSH: documents whose shingle sets have a Jaccard similarity of
    about `threshold` or more are clustered."""

    threshold: float = Field(0.8, gt=0.0, lt=1.0,
                             description="Jaccard similarity of the shingle sets at which two documents are "
                                         "near-duplicates; bands x rows are chosen for it on the S-curve "
                                         "1 - (1 - s^r)^b (thresher.dedup.minhash.optimal_param)")
    num_perm: int = Field(128, ge=2, le=1024,
                          description="MinHash permutations available; bands x rows <= num_perm of them are used")
    shingle: Literal["word", "char"] = Field(
        "word", description="shingles of n words (split on whitespace) or of n characters (Unicode code points), "
                            "taken from the normalised text (NFKC, lower case, whitespace collapsed)")
    n: int = Field(5, ge=1, le=64, description="words (or characters) per shingle")
    verify: bool = Field(True, description="check every candidate pair by the exact Jaccard similarity of its "
                                           "shingle sets (no false positives; the shingle sets travel with the "
                                           "band rows); false: every pair sharing a band bucket is a duplicate")
    bands: int | None = Field(None, gt=0, description="LSH bands b; unset: chosen with rows for the threshold")
    rows: int | None = Field(None, gt=0, description="rows per band r; unset: chosen with bands for the threshold")

    @model_validator(mode="after")
    def _bands_rows(self) -> "MinHashSpec":
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both `bands` and `rows`, or neither (then they are chosen for the threshold)")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} is more than num_perm = {self.num_perm}")
        return self

    def band_rows(self) -> tuple[int, int]:
        """(bands, rows): as given, or the S-curve optimum for the threshold. With `verify` false
        positives are removed afterwards, so misses weigh 9x more than false candidates
        (threshold 0.8, 128 permutations: 14 x 9, P(candidate) 0.87 at s = 0.8, 0.975 at 0.85)."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        from thresher.dedup.minhash import optimal_param

        return optimal_param(self.threshold, self.num_perm, *((0.1, 0.9) if self.verify else (0.5, 0.5)))


class KeepColumn(Strict):
    """Keep the cluster member with the highest value of a score column (ties: lowest id)."""

    column: str = Field(..., min_length=1, description="a score-table column (a scorer's or input.score_columns)")


class DedupSpec(Strict):
    """Remove exact and near-duplicates before the filters and the selector: every cluster keeps
    one document; the others are rejected as `exact_duplicate` (same normalised text as the kept
    one) or `near_duplicate`, and every row gets `dup_cluster`, `dup_cluster_size`, `dup_keep`."""

    exact: bool = Field(True, description="cluster documents whose normalised text (NFKC, lower case, whitespace "
                                          "runs collapsed, stripped) has the same 128-bit hash")
    minhash: MinHashSpec | None = Field(None, description="near-duplicates by MinHash LSH; unset: exact only")
    keep: Literal["lowest_id"] | KeepColumn = Field(
        "lowest_id", description="which member of a cluster is kept: `lowest_id` (the smallest document id; then "
                                 "the first in shard and row order), or `{column: NAME}` (the highest value; "
                                 "missing values last; ties by lowest id)")

    @model_validator(mode="after")
    def _something(self) -> "DedupSpec":
        if not self.exact and self.minhash is None:
            raise ValueError("nothing to do: set `exact: true` or give `minhash: {...}`")
        return self
