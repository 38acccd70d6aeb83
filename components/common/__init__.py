"""Code every component shares: errors, atomic file writes, hashing, structured logs."""
