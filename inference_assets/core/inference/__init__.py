"""Running a classifier over stored pixels: batch by batch from a pixel shard into a result file
(``batches``), a step's partitions with what it reports about them (``partitions``), on the
device and precision asked for (``devices``), on a GPU held by a file lock (``gpu_assignment``),
at the probed automatic batch size on CUDA (``batch_size``).
"""
