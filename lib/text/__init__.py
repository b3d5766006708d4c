"""Model-free text handling: sentence splitting and packing, token-bounded chunks, language codes."""
