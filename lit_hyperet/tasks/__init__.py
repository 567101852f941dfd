"""Tasks and datasets, each with its reading code, prompts, official rules, metric and datamodule. Built on the
shared plumbing of :mod:`lit_hyperet.data`; never imports a model family."""
