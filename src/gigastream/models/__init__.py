"""gigastream.models: assembled models (:class:`~gigastream.models.streaming_mil.StreamingMIL`:
any streamed trunk + any MIL head; :func:`~gigastream.models.streaming_mil.streaming_clam`:
the StreamingCLAM preset; :class:`~gigastream.models.patch_mil.PatchMIL`: any patch encoder
(:mod:`~gigastream.models.encoders`) + any MIL head on a slide's bag of tissue patches)."""
