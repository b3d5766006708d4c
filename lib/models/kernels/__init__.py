"""lmpipe's own CPU kernels, compiled from source on first use where a library offers none."""
