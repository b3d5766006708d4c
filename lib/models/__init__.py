"""Models: what a --model names, where it lies on disk, how it loads (and quantizes), what it is,
and lmpipe's own forward pass."""
