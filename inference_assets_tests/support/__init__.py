"""Helpers shared by the tests (and by ``tools/screenshots.py``): where the project is and a pipeline
subprocess's environment, real servers, the awkward-image corpus, your-own-model forms, headless
Chromium and ``dagster dev``."""
