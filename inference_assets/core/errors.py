"""Errors raised for bad configuration: each message is one line naming the thing and the fix."""


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which and how to fix it."""


class WeightsUnavailableError(ConfigError):
    """Weights were asked for that cannot be obtained (e.g. a download while offline)."""
