"""Integrations with web frameworks (each behind its optional extra)."""
