"""The generation loop (prefill, pick, step; batching, speculative decoding, sampling, stops,
grammars) and the server's scheduler over it."""
