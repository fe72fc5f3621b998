"""rtk's command line. The only layer that prints; it renders what the libraries return."""

from toolkit.cli.app import app, main

__all__ = ["app", "main"]
