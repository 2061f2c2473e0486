"""Automation: the sensor that follows a growing collection, the nightly schedule, and the
declarative automation that refreshes the DuckDB tables, the evaluation and the report after them."""
