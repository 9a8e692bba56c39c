"""Folk music in ABC notation: the notation and its bar arithmetic, the folk corpus, the validity
check, export to MIDI, WAV and SVG, novelty against a corpus, and complete tunes from a model."""
