"""Which folk tradition is this tune from? ``chargen identify`` on held-out tunes.

One character-level model per tradition, each trained on tunes from a collection that music21
ships: Irish (O'Neill's 1850), German (the Essen folksong sets altdeu, ballad, boehme, erk, fink,
kinder, zuccal) and Chinese (Essen han1, han2). The last 10% of each tradition's tunes are held
out; every held-out tune is then ranked by the three models. Titles (T:) are removed everywhere,
so the models must tell the traditions apart by the music and its headers alone.

    python benchmarks/identify.py                 # about 4 minutes on 2 cores
    python benchmarks/identify.py --time 120      # seconds of training per model
    python benchmarks/identify.py --music-only    # no header lines at all: melodies only

Prints per-tradition and overall accuracy and writes benchmarks/results/identify.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
GERMAN = ("altdeu", "ballad", "boehme", "erk", "fink", "kinder", "zuccal")
TRADITIONS = {
    "irish": lambda root: sorted((root / "oneills1850").rglob("*.abc")),
    "german": lambda root: sorted(
        p for p in (root / "essenFolksong").glob("*.abc") if p.stem.startswith(GERMAN)
    ),
    "chinese": lambda root: sorted((root / "essenFolksong").glob("han*.abc")),
}


def without_titles(tune: str) -> str:
    return "\n".join(line for line in tune.split("\n") if not line.startswith("T:"))


def music_only(tune: str) -> str:
    """The tune without any header line (X:, M:, L:, K:, R: ...): notes and bar lines only."""
    return "\n".join(line for line in tune.split("\n") if not re.match(r"[A-Za-z]:", line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", type=float, default=60.0, help="training seconds per model")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument(
        "--music-only", action="store_true", help="drop every header line, not only titles"
    )
    args = parser.parse_args()

    import chargen
    from chargen.music.folk import build_corpus, music21_corpus_dir
    from chargen.music.notation import TUNE_END, split_tunes

    corpus_root = music21_corpus_dir()
    held_out: dict[str, list[str]] = {}
    counts = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        env = dict(
            os.environ,
            CHARGEN_CHECKPOINTS=str(scratch / "runs"),
            CHARGEN_CACHE=str(scratch / "cache"),
        )
        for name, files in TRADITIONS.items():
            strip = music_only if args.music_only else without_titles
            tunes = [strip(t) for t in split_tunes(build_corpus(files(corpus_root)).text)]
            cut = int(len(tunes) * 0.9)
            held_out[name] = tunes[cut:]
            counts[name] = {"train_tunes": cut, "held_out_tunes": len(tunes) - cut}
            path = scratch / f"{name}.abc"
            path.write_text(TUNE_END.join(tunes[:cut]) + "\n", encoding="utf-8")
            print(f"{name}: training on {cut} tunes for {args.time:.0f}s ...", file=sys.stderr)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "chargen",
                    "train",
                    str(path),
                    "--name",
                    name,
                    "--hidden",
                    str(args.hidden),
                    "--time",
                    f"{args.time}s",
                    "--quiet",
                    "--force",
                ],
                env=env,
                check=True,
                cwd=ROOT,
            )
        models = [chargen.load(scratch / "runs" / name) for name in TRADITIONS]
        results = {}
        for name, tunes in held_out.items():
            right = sum(chargen.identify(tune + "\n", models)[0].name == name for tune in tunes)
            results[name] = {**counts[name], "correct": right, "accuracy": right / len(tunes)}
    total = sum(r["held_out_tunes"] for r in results.values())
    overall = sum(r["correct"] for r in results.values()) / total
    for name, result in results.items():
        print(
            f"{name:<8} {result['correct']:>4}/{result['held_out_tunes']:<4} "
            f"{result['accuracy']:.1%}",
            file=sys.stderr,
        )
    print(f"overall  {overall:.1%} (target >= 90%)", file=sys.stderr)
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "train_seconds_per_model": args.time,
        "hidden": args.hidden,
        "music_only": args.music_only,
        "traditions": results,
        "overall_accuracy": overall,
    }
    name = "identify-music-only.json" if args.music_only else "identify.json"
    (RESULTS / name).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
