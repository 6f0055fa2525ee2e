"""The operator console (issue 15)."""

__all__: list[str] = []
