"""Run directories: the one place that knows their layout (``store``), and a training run put
together from a corpus, a tokenizer, a model and a run directory (``session``)."""
