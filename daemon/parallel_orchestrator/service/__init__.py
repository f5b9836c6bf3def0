"""The long-running daemon: lifecycle, wiring of the pipeline, systemd notify."""
