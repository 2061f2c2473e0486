"""Files: where each artifact lives under the work directory (``layout``), written atomically
(``atomic``), Parquet with page checksums verified on read (``verified_parquet``), content hashes
(``hashing``), the per-partition result files (``results``) and their mirror on shared storage
(``shared_storage``).
"""
