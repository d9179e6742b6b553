"""Runnable examples of the modelreg SDK."""
