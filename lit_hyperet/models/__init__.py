"""Model families (``llava``: LLaVA with HyperET and LoRA; ``blip2``: BLIP-2 image–text retrieval for alignment) and
the plumbing they share: loading local Hugging Face dirs, the source API (:mod:`lit_hyperet.models.loading`), the tiny
tokenizers and configs (:mod:`lit_hyperet.models.tiny_configs`) of generated test models, and the ``make-tiny-model``
command. Never imports a task."""
