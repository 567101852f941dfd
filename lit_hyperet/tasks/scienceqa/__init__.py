"""ScienceQA: reading the raw and parquet layouts (``problems``), prompt formats (``prompts``), the official categories
and answer extraction (``rules``), the accuracy metric (``metric``), the offline scorer (``scoring``,
``scienceqa-score``), the datamodule (``datamodule``) and the synthetic demo dataset (``demo``, ``make-demo-data``)."""
