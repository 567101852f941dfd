"""Model families (``llava`` today) and the plumbing they share: loading local Hugging Face dirs, the source API
(:mod:`lit_hyperet.models.loading`), and the tiny tokenizer and configs (:mod:`lit_hyperet.models.tiny_configs`) of
generated test models. Never imports a task."""
