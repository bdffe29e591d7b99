"""Multiple-instance learning: attention heads and exact chunked bag encoding.

- :mod:`gigastream.mil.heads`: the head registry (``create_mil_head``, ``list_mil_heads``):
  ``abmil``, ``gated_abmil``, ``clam_sb``, ``clam_mb``, ``mean``, ``max``;
- :mod:`gigastream.mil.chunked`: :class:`~gigastream.mil.chunked.ChunkedEncoder`, exact
  gradient accumulation over the instances of a bag, and ``freeze_batchnorm``;
- :mod:`gigastream.mil.strategies`: how a bag is seen in training (``baseline``,
  ``accumulate``, ``sample``, ``frozen``) and :class:`~gigastream.mil.strategies.BagClassifier`,
  an encoder + head + strategy, the base of the patch-bag model
  (:class:`~gigastream.models.patch_mil.PatchMIL`; its encoders are in
  :mod:`gigastream.models.encoders`).
"""
