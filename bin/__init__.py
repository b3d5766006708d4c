"""The lm-* tools: one thin click command each.

A tool's task (its lmpipe.tasks module, and lmpipe.cli.settings' builder for it) is imported
inside its command, when it runs: `--help` and a usage error then load click and lmpipe's
option definitions only, not every task's modules.
"""
