"""The Dagster layer in process: assets and checks through materialize(), resources and settings, the
sensor and schedule, the definitions as the UI shows them, the executor and the Kubernetes config."""
