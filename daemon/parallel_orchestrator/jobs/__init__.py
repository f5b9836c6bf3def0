"""Running one job: its spec, spawning, process-group supervision, output, crash ledger."""
