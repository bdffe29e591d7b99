"""gigastream.viz."""
