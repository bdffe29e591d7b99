"""gigastream.streaming."""
