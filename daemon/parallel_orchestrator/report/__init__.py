"""What the daemon tells: the status board and file, JSON logs, the human views."""
