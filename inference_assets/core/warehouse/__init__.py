"""The DuckDB results database: refreshed from the manifest and the per-partition result files,
and the read queries the checks, the asset metadata, the report and ``make run`` share.
"""
