"""Vision models: images from records, loading detectors, the detection step, annotated copies."""
