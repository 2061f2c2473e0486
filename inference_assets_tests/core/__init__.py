"""Tests of inference_assets/core, one folder per core folder: its functions called directly, and where a
part is only seen whole, the pipeline run through Dagster over it (real servers, hostile files, your own model)."""
