"""gigastream.models: assembled models (e.g. :class:`~gigastream.models.streaming_clam.StreamingCLAM`)."""
