"""gigastream.mil."""
