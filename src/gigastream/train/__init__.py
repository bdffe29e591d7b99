"""gigastream.train."""
