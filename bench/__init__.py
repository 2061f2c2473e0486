"""``make bench``: throughput and memory of this project against the usual peers, on one machine.

Not part of the product and not imported by it; see ``bench/run.py``.
"""
