"""Workers: the broker built from settings, the dramatiq actors, the embedded in-process worker."""
