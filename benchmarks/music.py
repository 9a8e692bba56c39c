"""The folk-music benchmark: corpus, training, 100 tunes, validity, ending, copies, novelty.

Run on a quiet machine (another busy process slows training many times over):

    python benchmarks/music.py                          # about 17 minutes with --train-time 14m
    python benchmarks/music.py --train-time 5m --tunes 50 --corpus-sample 300

Steps, all through the ``chargen`` command line except the figures' arithmetic:

1. ``chargen corpus folk`` builds corpora/folk.abc from music21's collections (kept if present;
   ``--rebuild`` builds it again);
2. ``chargen train corpora/folk.abc --level abc --time T`` (the target allows 15 minutes);
3. ``chargen sample RUN --num N --seed S --json`` samples N complete tunes for each seed (cap: the
   default 1200 tokens; temperature: the tunes' default 0.5 unless ``--temperature``);
4. ``chargen abc check`` of the tunes with ``--corpus`` for novelty and exact copies, and of a
   random sample of corpus tunes: the ceiling (the corpus after cleaning), and the same for the
   raw collections with irregular tunes kept (what cleaning removed).

Prints a table on stderr and writes every figure to benchmarks/results/music-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpora" / "folk.abc"
RESULTS = ROOT / "benchmarks" / "results"
CHARGEN = [sys.executable, "-m", "chargen"]


def chargen(*args: str, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([*CHARGEN, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"chargen {' '.join(args)} failed:\n{result.stderr}")
    return result


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def check_file(path: Path, env: dict, corpus: Path | None = None) -> tuple[list[dict], dict]:
    extra = ["--corpus", str(corpus)] if corpus else []
    records = json_lines(chargen("abc", "check", str(path), "--json", *extra, env=env).stdout)
    return records[:-1], records[-1]["summary"]


def corpus_pass_rate(corpus: Path, sample: int, seed: int, work: Path, env: dict) -> dict:
    """Validity of ``sample`` random tunes of ``corpus`` (all of them if it has fewer)."""
    sys.path.insert(0, str(ROOT))
    from chargen.music.notation import split_tunes

    tunes = split_tunes(corpus.read_text(encoding="utf-8"))
    chosen = random.Random(seed).sample(tunes, min(sample, len(tunes)))
    path = work / f"sample-{corpus.stem}.abc"
    path.write_text("\n\n".join(chosen) + "\n", encoding="utf-8")
    started = time.perf_counter()
    _, summary = check_file(path, env)
    summary["check_seconds"] = round(time.perf_counter() - started, 1)
    summary["of_tunes"] = len(tunes)
    return summary


def sample_and_check(tunes: int, seed: int, temperature: str | None, work: Path, env: dict) -> dict:
    """``tunes`` tunes from the benchmark's run with ``seed``, checked against the corpus."""
    given = ["--temperature", temperature] if temperature else []
    started = time.perf_counter()
    sampled = chargen(
        "sample", "folk", "--num", str(tunes), "--seed", str(seed), *given, "--json", env=env
    )
    records = json_lines(sampled.stdout)
    seconds = time.perf_counter() - started
    generated = work / f"tunes-{seed}.abc"
    generated.write_text("\n\n".join(r["text"] for r in records) + "\n", encoding="utf-8")
    (RESULTS / f"music-tunes-{seed}.abc").write_text(generated.read_text(encoding="utf-8"))
    checks, summary = check_file(generated, env, corpus=CORPUS)
    novelty = [c["novelty"] for c in checks]
    ended = sum(r["ended"] for r in records)
    return {
        "seed": seed,
        "temperature": float(temperature) if temperature else "default",
        "tunes": len(records),
        "sample_seconds": round(seconds, 1),
        "valid": summary["valid"],
        "valid_fraction": summary["valid_fraction"],
        "ended_on_own": ended,
        "ended_fraction": ended / len(records),
        "exact_copies": summary["exact_copies"],
        "median_bars": sorted(c["bars"] or 0 for c in checks)[len(checks) // 2],
        "mean_longest_copy_share": sum(
            n["longest_copy"] / max(n["music_chars"], 1) for n in novelty
        )
        / len(novelty),
        "max_longest_copy": max(n["longest_copy"] for n in novelty),
        "mean_copied_8grams": sum(n["copied_ngrams"] for n in novelty) / len(novelty),
        "problems": [p for c in checks for p in c["problems"]][:40],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-time", default="14m", help="chargen train --time (default 14m)")
    parser.add_argument("--tunes", type=int, default=100, help="tunes to sample (default 100)")
    parser.add_argument("--corpus-sample", type=int, default=1000, help="corpus tunes to check")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[1, 2, 3], help="sampling seeds, 100 tunes each"
    )
    parser.add_argument("--rebuild", action="store_true", help="build corpora/folk.abc again")
    parser.add_argument(
        "--train-args",
        default="--lr 6e-3 --warmup 20 --min-lr-frac 0.1 --weight-decay 0 --schedule cosine "
        "--beta1 0.9",
        help="more chargen train options (default: --lr 6e-3 --warmup 20 --min-lr-frac 0.1 "
        "--weight-decay 0 --schedule cosine --beta1 0.9, "
        "the settings the README's figures were measured with)",
    )
    parser.add_argument(
        "--temperature", help="chargen sample --temperature (default: the tunes' own, 0.5)"
    )
    parser.add_argument(
        "--skip-train", action="store_true", help="sample from the run the last benchmark trained"
    )
    args = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    figures: dict = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="chargen-music-") as scratch:
        work = Path(scratch)
        # The run is kept (benchmarks/results is not committed) so --skip-train can sample again.
        env = os.environ | {"CHARGEN_CHECKPOINTS": str(RESULTS / "music-checkpoints")}

        if args.rebuild or not CORPUS.is_file():
            chargen("corpus", "folk", "-o", str(CORPUS), env=env)
        raw = work / "raw.abc"
        built = json_lines(
            chargen("corpus", "folk", "-o", str(raw), "--keep-irregular", "--json", env=env).stdout
        )[0]
        figures["corpus"] = {"tunes": CORPUS.read_text(encoding="utf-8").count("\nX:") + 1}
        figures["raw_collections"] = built

        summary_file = RESULTS / "music-train.json"
        if not args.skip_train:
            started = time.perf_counter()
            train = chargen(
                "train",
                str(CORPUS),
                "--level",
                "abc",
                "--name",
                "folk",
                "--force",
                "--time",
                args.train_time,
                "--eval-every",
                "1000",
                "--json",
                "--quiet",
                *args.train_args.split(),
                env=env,
            )
            trained = json.loads(train.stdout) | {
                "wall_seconds": round(time.perf_counter() - started, 1),
                "options": f"--time {args.train_time} --eval-every 1000 {args.train_args}",
            }
            summary_file.write_text(json.dumps(trained, indent=2) + "\n")
        figures["train"] = json.loads(summary_file.read_text())

        figures["generated"] = [
            sample_and_check(args.tunes, seed, args.temperature, work, env) for seed in args.seeds
        ]
        figures["corpus_ceiling"] = corpus_pass_rate(
            CORPUS, args.corpus_sample, args.seeds[0], work, env
        )
        figures["raw_ceiling"] = corpus_pass_rate(raw, args.corpus_sample, args.seeds[0], work, env)

    (RESULTS / "music-latest.json").write_text(json.dumps(figures, indent=2) + "\n")
    t = figures["train"]
    rows = [("training", f"{t['seconds']:.0f} s, {t['steps']} steps, val {t['best_val_loss']:.3f}")]
    for g in figures["generated"]:
        rows += [
            (
                f"seed {g['seed']}: valid tunes",
                f"{g['valid']}/{g['tunes']} ({g['valid_fraction']:.1%})",
            ),
            ("  ended on their own", f"{g['ended_on_own']}/{g['tunes']}"),
            ("  exact copies", str(g["exact_copies"])),
            ("  longest copied stretch", f"mean {g['mean_longest_copy_share']:.1%} of a tune"),
            ("  8-grams found in corpus", f"mean {g['mean_copied_8grams']:.1%}"),
        ]
    rows += [
        ("corpus pass rate (ceiling)", f"{figures['corpus_ceiling']['valid_fraction']:.1%}"),
        ("raw collections pass rate", f"{figures['raw_ceiling']['valid_fraction']:.1%}"),
    ]
    for name, value in rows:
        print(f"{name:<28} {value}", file=sys.stderr)
    print(f"wrote {RESULTS / 'music-latest.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
