"""modelreg Python SDK."""
