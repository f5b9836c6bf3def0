"""Result reuse: per-worktree file digests, job input keys and the on-disk result store."""
