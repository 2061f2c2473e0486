"""The machine the code runs on: the CPUs this process may use (``cpus``), an order-preserving
parallel map with bounded results in flight (``parallel``), and progress logs of long stages
(``progress``).
"""
