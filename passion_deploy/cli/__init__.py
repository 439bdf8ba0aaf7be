"""Command-line entry points (passion-sr, passion-demo, ...)."""
