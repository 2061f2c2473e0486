"""The collection: the image manifest (one row per image of a source, with its stable id, content
hash, label and partition), the stable assignment of images to partitions, and what is pending
(images new or changed since the manifest, partitions whose files are stale).
"""
