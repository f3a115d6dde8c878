"""The byte path: sources, one-pass scan, decompression, hashing, holes, fan-out, staging."""
