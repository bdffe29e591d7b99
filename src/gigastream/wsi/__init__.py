"""gigastream.wsi."""
