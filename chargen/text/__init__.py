"""Text in: tokenizers (char, word and abc levels), corpora read as streams and cached as token
arrays, and the layout of those arrays as training windows and evaluation streams."""
