"""The machine the code runs on: the CPUs this process may use (``cpus``), an order-preserving
parallel map with bounded results in flight (``parallel``), progress logs of long stages
(``progress``), and the C heap kept between batches of large allocations (``allocator``).
"""
