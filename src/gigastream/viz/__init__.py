"""Visualisation: :mod:`~gigastream.viz.heatmap` (score maps over slides, PNG and pyramidal TIFF)."""
