"""Tunes written for these tests (not taken from any collection), good ones and broken ones,
and a tiny ABC model trained on them."""

from pathlib import Path

JIG = """X:1
R:jig
T:The Lamplighter's Jig
M:6/8
L:1/8
K:D
A|dfa afd|gbg fed|cde fga|1 d3 d2:|2 d3 d2||
|:f|afd dfa|bgb bag|fef gec|d3 d2:|"""
# pickup A; first and second endings; a part with its own pickup after |:

REEL = """X:2
O:irish
R:reel
T:Harbour Wall Reel
M:4/4
L:1/8
K:G
|:GABc dBGB|cAFA dcBA|GABc dedB|1 cAFA G4:|2 cAFA G2 Bd||
|:g2 gf gdBd|efge dBGB|c2 ec B2 dB|A2 (3ABA G4:|"""
# a triplet (3ABA in the last bar

WALTZ = """X:3
T:Slow Turn at Evening
M:3/4
L:1/8
K:Am
E2|A2 c2 e2|a3 g e2|f>e d2 ^c2|d4 ed|
c2 B2 A2|[EA]2 G2 E2|A6|]"""
# broken rhythm f>e, an accidental ^c, a chord [EA]2, a final bar |]

GOOD = [JIG, REEL, WALTZ]

BROKEN = {
    "missing headers": "X:4\nT:No Meter Or Key\nL:1/8\nabc def|gfe dcB|",
    "bar too long": "X:5\nT:One Too Many\nM:6/8\nL:1/8\nK:D\ndfa afd|gbg fede|cde fga|d3 d3|]",
    "bar too short": "X:6\nT:One Short\nM:6/8\nL:1/8\nK:D\ndfa afd|gbg fe|cde fga|d3 d3|]",
    "unreadable symbol": "X:7\nT:Stray Hash\nM:3/4\nL:1/8\nK:G\nG2 B2 d2|g2 #d2 B2|G6|]",
    "no music": "X:8\nT:Only Headers\nM:3/4\nL:1/8\nK:G\n",
    "unknown key": "X:9\nT:Key Of Q\nM:3/4\nL:1/8\nK:Q\nG2 B2 d2|g6|]",
    # what priming with a whole "X:1" line made: the model went on writing the number
    "stray number": "X:11\n51\nT:Stray\nM:3/4\nL:1/8\nK:G\nG2 B2 d2|g6|]",
    "number for a title": "X:12\nT:9\nM:3/4\nL:1/8\nK:G\nG2 B2 d2|g6|]",
    # what abcm2ps refuses to engrave ("Bad tie", "Note too much dotted")
    "tie to another note": "X:13\nT:Bad Tie\nM:3/4\nL:1/8\nK:G\nG2 B2- d2|g6|]",
    "length of no single note": "X:14\nT:Five\nM:3/4\nL:1/8\nK:G\nG5 B|g6|]",
}
"""What is wrong with each, by name; the checker must say so."""


def corpus_of(tunes: list[str], copies: int, seed: int = 0) -> str:
    """A training text of ``copies`` tunes drawn from ``tunes`` in a random order, numbered."""
    import random

    from chargen.music.notation import renumber

    rng = random.Random(seed)
    return "\n\n".join(renumber(rng.choice(tunes), i + 1) for i in range(copies)) + "\n"


TINY_ABC = [
    "--level", "abc", "--hidden", "64", "--embedding", "16", "--batch-size", "8",
    "--window", "32", "--max-steps", "400", "--eval-every", "200", "--lr", "1e-2",
    "--warmup", "10", "--precision", "fp32", "--weight-decay", "0", "--schedule", "cosine",
    "--beta1", "0.9", "--quiet",
]  # fmt: skip
"""A model that learns the three good tunes well enough in about two seconds (by heart: no weight
decay; the schedule and momentum its tests were tuned with)."""


def train_tiny_abc(folder: Path) -> Path:
    """Train the tiny ABC model on ``GOOD`` under ``folder``; returns its run directory."""
    from tests.cli_helpers import run

    corpus = folder / "tunes.abc"
    corpus.write_text(corpus_of(GOOD, 60), encoding="utf-8")
    result = run("--checkpoint-dir", folder / "runs", "train", corpus, "--name", "t", *TINY_ABC)
    assert result.exit_code == 0, result.output
    return folder / "runs" / "t"
