"""gigastream.train: the one training engine (PyTorch Lightning) and the run layer.

- :mod:`~gigastream.train.module`: :class:`MILClassifier`, the LightningModule that trains any
  MIL model (a streamed slide classifier or a bag model) one slide/bag per step;
- :mod:`~gigastream.train.engine`: ``fit`` (train a run folder), ``evaluate_manifest``,
  ``predict_slide_files``, ``load_classifier`` (rebuild a model from its checkpoint alone);
- :mod:`~gigastream.train.config`: the run configuration (dataclasses, YAML, typo checks);
- :mod:`~gigastream.train.data`: slides as examples, label checks, splits, DataLoaders.

Submodules are imported on use (Lightning is not imported by ``import gigastream.train``).
"""
