"""The DATAMASK selector: blocks of the score table, each solved by the policy-gradient optimiser."""

from __future__ import annotations

import numpy as np

from thresher.selectors.datamask.blocks import BlockResult, BlockSelector
from thresher.selectors.datamask.optimiser import solve_block
from thresher.selectors.datamask.params import DataMaskParams


class DataMaskSelector(BlockSelector):
    """DATAMASK over the score table: split into blocks, solve each, take the union.

    Extra column ``datamask_logit``: the learned logit (null for pruned documents)."""

    name = "datamask"
    Params = DataMaskParams
    result_column = "datamask_logit"

    def solve(self, quality: np.ndarray, emb: np.ndarray, n_select: int, seed: int, block_id: int) -> BlockResult:
        return solve_block(quality, emb, n_select, self.params, seed, block_id)  # type: ignore[arg-type]
