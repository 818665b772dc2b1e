"""Exact and MinHash-LSH near-duplicate detection: the per-batch maths (`exact`, `minhash`), the
job section (`spec`) and the cluster steps that run inside engine tasks (`components`). The stage
that wires them to an engine is `thresher.pipelines.dedup_stage`."""
