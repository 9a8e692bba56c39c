"""``chargen serve``: the HTTP API (OpenAI-compatible completions, tunes, scores) and the web page,
one thin layer over the Python API, with continuous batching of requests on each model."""
