"""The file watcher: watchfiles' Rust notifier in a thread, with a stat-poll fallback."""
