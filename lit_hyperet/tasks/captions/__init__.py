"""Image–caption data: reading Karpathy split files and LAVIS annotations (``annotations``), samples and batches
(``dataset``), one caption per image per training epoch (``sampling``), the datamodule (``datamodule``) and the
synthetic demo dataset (``demo``, ``make-caption-demo-data``)."""
