"""The model-free filters: one thin click command each; their tasks are imported when they run,
as bin/'s tools' are (see lmpipe.bin)."""
