"""LLaVA instruction data: reading LLaVA's conversation JSON (``llava_json``) and its datamodule (``datamodule``)."""
