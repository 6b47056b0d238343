"""Live Materials Project queries (filled in below)."""
