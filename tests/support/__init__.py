"""Helpers the tests share (no tests here): import them as `tests.support.<module>`."""
