"""The command-line layer, the only one that imports click: option bundles, settings built from
options, one-line errors and exit codes, the tools' click definitions, man pages."""
