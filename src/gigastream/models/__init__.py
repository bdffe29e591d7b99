"""gigastream.models."""
