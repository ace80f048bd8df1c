"""Tests of scope."""
