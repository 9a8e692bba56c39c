"""Generating and scoring: the one generation loop (sampling, beam search, forced tokens, stop
rules), text samples built on it, and the scoring of texts by one or several models."""
