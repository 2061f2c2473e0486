"""The pipeline as a user runs it, in subprocesses: `make run`, the Dagster and dg command lines, `dagster dev`
and its daemon (backfills), crashes and dead runs, concurrent runs, the CI gate."""
