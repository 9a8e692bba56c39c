"""Folk music in ABC notation: the notation and its bar arithmetic, the folk corpus, the grammar
that keeps tunes valid as they are written, the validity check, statistics and novelty against a
corpus, export to MIDI, WAV and SVG, and complete tunes from a model."""
