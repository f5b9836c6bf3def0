"""Pure stages between the watcher and the jobs: batcher, planner, scheduler (no I/O)."""
