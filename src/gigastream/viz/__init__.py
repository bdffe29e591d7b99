"""Visualisation: :mod:`~gigastream.viz.heatmap` (score maps over slides, PNG and pyramidal
TIFF), :mod:`~gigastream.viz.tissue` (tissue masks outlined on the slide's thumbnail) and
:mod:`~gigastream.viz.curves` (training curves)."""
