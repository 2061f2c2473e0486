"""Concurrency pools: steps that share a scarce resource take a slot of its pool.

- ``gpu``: the ``predictions`` step (one slot per accelerator; on a CPU-only machine one slot,
  since a forward pass already uses every core).
- ``duckdb``: the ``prediction_results`` refresh (DuckDB has a single writer: one slot).

Limits are set on the instance (``dagster.yaml``'s ``concurrency.pools.default_limit``, or per
pool with ``dagster instance concurrency set gpu 4``); see the README's "Scaling out".
"""

GPU_POOL = "gpu"
DUCKDB_POOL = "duckdb"
