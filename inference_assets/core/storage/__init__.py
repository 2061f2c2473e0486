"""Files: the work area that hands out the work folder's files with the shared mirror built in
(``work_area``), where each artifact lives under the work directory and what it is named (``layout``),
opened by URI through pyarrow's filesystems (``filesystems``), written atomically
(``atomic``), Parquet with page checksums verified on read (``verified_parquet``), content hashes
(``hashing``), the per-partition result files (``results``) and their mirror on shared storage
(``shared_storage``).
"""
