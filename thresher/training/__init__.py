"""Training feed and training-time methods.

- ``data``: :class:`ShardDataset` (Parquet shards -> token ids, labels, weights, masks), ``collate``.
- ``reweight``: online loss-based sample reweighting and offline ``weight`` columns.
- ``sstoken``: ssToken token selection (online) and offline ``token_mask`` columns.
- ``loss``: :func:`masked_loss` for plain loops and :class:`Objective` (model call + loss).
- ``hf``: a Hugging Face ``Trainer`` mix-in that only overrides ``compute_loss``.
- ``train_cmd``: the reference trainer behind ``thresher train``; ``spec``: its job-spec section.

Submodules are imported on demand (this package imports nothing heavy).
"""
