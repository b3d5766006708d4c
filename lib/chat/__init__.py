"""A record as the model sees it and its answer as the record gets it: prompts and chat templates,
tools, answer shapes, reasoning."""
