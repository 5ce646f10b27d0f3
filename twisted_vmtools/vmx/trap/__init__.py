"""ptrace trap engine."""
