"""Training feed and training-time methods.

- ``data``: :class:`ShardDataset` (Parquet shards -> token ids, labels, weights, masks), ``collate``.
- ``reweight``: online loss-based sample reweighting and offline ``weight`` columns.
- ``sstoken``: ssToken token selection (online) and offline ``token_mask`` columns.
- ``loss``: :func:`masked_loss` for plain loops and :class:`Objective` (model call + loss).
- ``hf``: a Hugging Face ``Trainer`` mix-in that only overrides ``compute_loss``.
- ``trainer``: the reference trainer (:func:`~thresher.training.trainer.train`, checkpoints, resume)
  behind ``thresher train`` (:mod:`thresher.commands.train`); ``spec``: the job's ``train:`` section.

Submodules are imported on demand (this package imports nothing heavy).
"""
