"""CLI commands beyond the daemon: once, init, demo."""
