"""The project's tools that are neither the pipeline nor its tests: ``screenshots`` (``make screenshots``)."""
