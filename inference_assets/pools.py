"""Concurrency pools: steps that share a scarce resource take a slot of its pool.

- ``gpu``: the ``prediction_files`` steps, the model list's too (one slot per accelerator; on a CPU-only machine one slot,
  since a forward pass already uses every core).
- ``duckdb``: the steps that open the DuckDB file: ``prediction_results`` (the refresh),
  ``evaluation``, ``model_comparison``, ``calibration``, ``review_queue`` and ``report`` (one process
  at a time may open it for writing: one slot).

Limits are set on the instance (``dagster.yaml``'s ``concurrency.pools.default_limit``, or per
pool with ``dagster instance concurrency set gpu 4``); see docs/scaling.md.

``make run`` frees the slots of its own killed runs before each step, and a step of it that waits
for a slot says so, gives up after ``INFERENCE_SLOT_WAIT_SECONDS`` and stops on Ctrl-C/SIGTERM
(see ``instance_guard.py``).
"""

GPU_POOL = "gpu"
DUCKDB_POOL = "duckdb"
