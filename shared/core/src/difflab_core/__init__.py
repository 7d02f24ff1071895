"""difflab core runtime."""
