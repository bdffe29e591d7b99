"""gigastream.models: assembled models (:class:`~gigastream.models.streaming_mil.StreamingMIL`:
any streamed trunk + any MIL head; :func:`~gigastream.models.streaming_mil.streaming_clam`:
the StreamingCLAM preset)."""
