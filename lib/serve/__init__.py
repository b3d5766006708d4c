"""lm-serve: the OpenAI-compatible HTTP API over the engine's scheduler."""
