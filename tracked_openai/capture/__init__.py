"""Capture: one tracked call observed, from the request the SDK builds to the bytes it reads."""
