"""Tasks: what a tool does to its records, built on the shared library."""
