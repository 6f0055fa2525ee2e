"""Runnable examples; the tests execute them."""
