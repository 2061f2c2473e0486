"""Automation: the sensor that follows a growing collection, and the nightly schedule."""
