"""The command-line layer: click option bundles, one-line errors and exit codes, man pages."""
