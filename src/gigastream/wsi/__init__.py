"""Whole-slide images: reading, resolution, tissue, manifests, synthetic slides, lazy input.

- :mod:`~gigastream.wsi.reader`: :class:`~gigastream.wsi.reader.SlideReader` (``open``,
  ``from_array``), levels, mpp, regions at a level or an mpp, thumbnails, ``SlideError``;
  backends in :mod:`~gigastream.wsi.backends` (OpenSlide, tiffslide, in-memory);
- :mod:`~gigastream.wsi.tissue`: tissue masks (Otsu on saturation), PNG I/O, empty slides;
- :mod:`~gigastream.wsi.manifest`: manifest CSVs and stratified patient-level folds;
- :mod:`~gigastream.wsi.pyramid`: streaming writer of pyramidal tiled JPEG TIFFs;
- :mod:`~gigastream.wsi.synth`: synthetic labelled slides with planted lesions;
- :mod:`~gigastream.wsi.source`: :class:`~gigastream.wsi.source.SlideSource`, a slide as a
  lazy streaming input;
- :mod:`~gigastream.wsi.bench`: region-read throughput per backend.
"""
