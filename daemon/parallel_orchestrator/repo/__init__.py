"""Where hypotheses come from: git worktrees, ignore filters, path globs."""
