"""Errors raised for bad configuration: each message is one line naming the thing and the fix."""

from collections.abc import Iterable


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which and how to fix it.

    ``settings`` lists the settings the message names in the core's words (``image_root``,
    ``work_dir``...); a deployment layer may name them its own way (``settings.for_deployment``)."""

    def __init__(self, message: str, *, settings: Iterable[str] = ()):
        super().__init__(message)
        self.settings = tuple(settings)


class WeightsUnavailableError(ConfigError):
    """Weights were asked for that cannot be obtained (e.g. a download while offline)."""
