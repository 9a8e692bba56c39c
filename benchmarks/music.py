"""The folk-music benchmark: corpus, training, tunes with and without the grammar, requests.

Run on a quiet machine (another busy process slows training many times over):

    python benchmarks/music.py --ship          # about 30 minutes: trains, measures, ships
    python benchmarks/music.py --skip-train    # measures the last run again (about 25 minutes)
    python benchmarks/music.py --requests-only # the requests again (about 1 minute)

Steps, all through the ``chargen`` command line except the figures' arithmetic:

1. ``chargen corpus folk`` builds corpora/folk.abc from music21's collections;
2. ``chargen train corpora/folk.abc --level abc --hidden 512 --time T``, chargen's defaults
   otherwise (the README's recipe; 512 units whatever the CPU); ``--ship`` then copies the
   run's best weights, tokenizer and run.json to chargen/pretrained/folk, the model ``chargen
   sample folk`` finds after install;
3. for each temperature (0.5, 0.8, 1.0), with the grammar and with ``--free``, and for each
   seed, ``chargen sample folk --num N --json``: how long it took, then ``chargen abc check``
   (validity, a music21 parse, novelty against the corpus) and ``chargen abc stats`` (bars,
   parts, endings, range, note lengths) next to the corpus's own;
4. requests: a rhythm, style and form (``--rhythm jig --style irish --bars 16 --parts 2``),
   a meter and key, a prime of opening notes; how many tunes have what was asked;
5. ``chargen abc check`` of corpus tunes: the ceiling.

Prints a table on stderr and writes every figure to benchmarks/results/music-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chargen.music.notation import RHYTHM_METERS, body, headers, split_tunes  # noqa: E402
from chargen.music.stats import distances, tune_shape  # noqa: E402

CORPUS = ROOT / "corpora" / "folk.abc"
RESULTS = ROOT / "benchmarks" / "results"
SHIPPED = ROOT / "chargen" / "pretrained" / "folk"
SHIPPED_FILES = ("run.json", "tokenizer.json", "best.safetensors")
CHARGEN = [sys.executable, "-m", "chargen"]
REQUESTS = {
    "irish jig, 16 bars in 2 parts": (
        ["--rhythm", "jig", "--style", "irish", "--bars", "16", "--parts", "2"],
        {"R": "jig", "O": "irish", "bars": 16, "parts": 2},
    ),
    "reel, 16 bars in 2 parts": (
        ["--rhythm", "reel", "--bars", "16", "--parts", "2"],
        {"R": "reel", "bars": 16, "parts": 2},
    ),
    "german song": (["--style", "german", "--rhythm", "song"], {"O": "german", "R": "song"}),
    "6/8 in D": (["--meter", "6/8", "--key", "D"], {"M": "6/8", "K": "D"}),
    "prime M:6/8 K:D A|dfa": (["--prime", "M:6/8\nK:D\nA|dfa"], {"M": "6/8", "K": "D"}),
}


def chargen(*args: str, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([*CHARGEN, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"chargen {' '.join(args)} failed:\n{result.stderr}")
    return result


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sample(tunes: int, seed: int, extra: list[str], work: Path, env: dict) -> tuple[Path, dict]:
    """``tunes`` tunes from the folk run; the file they are in and how long they took."""
    started = time.perf_counter()
    out = chargen("sample", "folk", "--num", str(tunes), "--seed", str(seed), *extra, "--json",
                  env=env)  # fmt: skip
    seconds = time.perf_counter() - started
    records = json_lines(out.stdout)
    path = work / f"tunes-{seed}-{'-'.join(extra).replace('/', '')}.abc"
    path.write_text("\n\n".join(r["text"] for r in records) + "\n", encoding="utf-8")
    ended = sum(r["ended"] for r in records)
    return path, {"seconds": round(seconds, 2), "tunes_per_second": round(tunes / seconds, 1),
                  "ended": ended}  # fmt: skip


def measure(path: Path, corpus_profile: dict, env: dict) -> dict:
    """Validity, novelty and shape of the tunes in ``path``."""
    checks = json_lines(chargen("abc", "check", str(path), "--json", "--corpus", str(CORPUS),
                                env=env).stdout)  # fmt: skip
    summary, checks = checks[-1]["summary"], checks[:-1]
    found = json.loads(chargen("abc", "stats", str(path), "--json", env=env).stdout)["file"]
    novelty = [c["novelty"] for c in checks]
    return {
        "valid": summary["valid"],
        "tunes": summary["tunes"],
        "exact_copies": summary["exact_copies"],
        "mean_copied_8grams": round(statistics.mean(n["copied_ngrams"] for n in novelty), 4),
        "mean_longest_copy_share": round(
            statistics.mean(n["longest_copy"] / max(n["music_chars"], 1) for n in novelty), 4
        ),
        "in_dance_meter": in_dance_meter(path),
        "stats": found,
        "distance": distances(found, corpus_profile),
        "problems": [p for c in checks for p in c["problems"]][:20],
    }


def compliance(path: Path, wanted: dict) -> float:
    """The share of the tunes in ``path`` that have every header value and form in ``wanted``."""
    tunes = split_tunes(path.read_text(encoding="utf-8"))
    good = 0
    for tune in tunes:
        fields, shape = headers(tune), tune_shape(tune)
        have = fields | ({"bars": shape.bars, "parts": shape.parts} if shape else {})
        good += all(have.get(k) == v for k, v in wanted.items())
    return good / len(tunes)


def in_dance_meter(path: Path) -> float | None:
    """The share of the tunes with a dance rhythm (R: jig, reel, ...) written in one of its
    meters (a jig in 6/8 or 12/8); None when there is no such tune."""
    dances = [headers(t) for t in split_tunes(path.read_text(encoding="utf-8"))]
    dances = [f for f in dances if f.get("R") in RHYTHM_METERS]
    if not dances:
        return None
    return sum(f.get("M") in RHYTHM_METERS[f["R"]] for f in dances) / len(dances)


def train(args, env: dict) -> dict:
    started = time.perf_counter()
    out = chargen("train", str(CORPUS), "--level", "abc", "--hidden", "512", "--name", "folk",
                  "--force", "--time", args.train_time, "--json", "--quiet", env=env)  # fmt: skip
    return json.loads(out.stdout) | {
        "wall_seconds": round(time.perf_counter() - started, 1),
        "options": f"--level abc --hidden 512 --time {args.train_time} (defaults otherwise)",
    }


def ship(run: Path) -> dict:
    """Copy the run's best weights, tokenizer and run.json into the package."""
    SHIPPED.mkdir(parents=True, exist_ok=True)
    info = json.loads((run / "run.json").read_text())
    info |= {"corpus": ["corpora/folk.abc"], "resumable": False}  # weights only: no resuming
    (SHIPPED / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    for name in SHIPPED_FILES[1:]:
        shutil.copyfile(run / name, SHIPPED / name)
    size = sum((SHIPPED / name).stat().st_size for name in SHIPPED_FILES)
    if size > 10_000_000:
        raise SystemExit(f"the shipped model is {size:,} bytes, over the 10 MB it may have")
    return {"bytes": size, "files": list(SHIPPED_FILES)}


def corpus_ceiling(sample_size: int, work: Path, env: dict) -> dict:
    tunes = split_tunes(CORPUS.read_text(encoding="utf-8"))
    chosen = random.Random(1).sample(tunes, min(sample_size, len(tunes)))
    path = work / "corpus-sample.abc"
    path.write_text("\n\n".join(chosen) + "\n", encoding="utf-8")
    summary = json_lines(chargen("abc", "check", str(path), "--json", env=env).stdout)[-1]
    return summary["summary"] | {"of_tunes": len(tunes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-time", default="14m", help="chargen train --time (default 14m)")
    parser.add_argument("--skip-train", action="store_true", help="measure the last run again")
    parser.add_argument("--ship", action="store_true", help="copy the run into the package")
    parser.add_argument("--tunes", type=int, default=100, help="tunes per sample (default 100)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--temperatures", nargs="+", default=["0.5", "0.8", "1.0"])
    parser.add_argument("--corpus-sample", type=int, default=1000, help="corpus tunes to check")
    parser.add_argument("--requests-only", action="store_true",
                        help="measure the requests again, keep the other figures")  # fmt: skip
    args = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    figures: dict = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    runs = RESULTS / "music-checkpoints"  # kept (not committed), so that --skip-train can measure
    env = os.environ | {"CHARGEN_CHECKPOINTS": str(runs)}
    if args.requests_only:
        figures = json.loads((RESULTS / "music-latest.json").read_text())
        with tempfile.TemporaryDirectory(prefix="chargen-music-") as scratch:
            figures["requests"] = requests(args, Path(scratch), env)
        (RESULTS / "music-latest.json").write_text(json.dumps(figures, indent=2) + "\n")
        return report(figures)
    with tempfile.TemporaryDirectory(prefix="chargen-music-") as scratch:
        work = Path(scratch)
        figures["corpus"] = json_lines(
            chargen("corpus", "folk", "-o", str(CORPUS), "--json", env=env).stdout
        )[0]
        corpus_profile = json.loads(chargen("abc", "stats", str(CORPUS), "--json", env=env).stdout)
        figures["corpus_stats"] = corpus_profile = corpus_profile["file"]
        summary_file = RESULTS / "music-train.json"
        if not args.skip_train:
            summary_file.write_text(json.dumps(train(args, env), indent=2) + "\n")
        figures["train"] = json.loads(summary_file.read_text())
        if args.ship:
            figures["shipped"] = ship(runs / "folk")
        figures["sampling"] = sampling(args, corpus_profile, work, env)
        figures["requests"] = requests(args, work, env)
        figures["corpus_ceiling"] = corpus_ceiling(args.corpus_sample, work, env)
    (RESULTS / "music-latest.json").write_text(json.dumps(figures, indent=2) + "\n")
    report(figures)


def sampling(args, corpus_profile: dict, work: Path, env: dict) -> list[dict]:
    rows = []
    for temperature in args.temperatures:
        for free in (False, True):
            for seed in args.seeds:
                extra = ["--temperature", temperature] + (["--free"] if free else [])
                path, timing = sample(args.tunes, seed, extra, work, env)
                asked = {"temperature": float(temperature), "grammar": not free, "seed": seed}
                rows.append(asked | timing | measure(path, corpus_profile, env))
    return rows


def requests(args, work: Path, env: dict) -> dict:
    found = {}
    for name, (options, wanted) in REQUESTS.items():
        path, timing = sample(args.tunes, args.seeds[0], options, work, env)
        checks = json_lines(chargen("abc", "check", str(path), "--json", env=env).stdout)
        found[name] = timing | {
            "valid": checks[-1]["summary"]["valid"],
            "as_asked": round(compliance(path, wanted), 3),
            "in_dance_meter": in_dance_meter(path),
            "opening_kept": sum(body(t).startswith("A|dfa") for t in split_tunes(path.read_text()))
            if "--prime" in options
            else None,
        }
    return found


def report(figures: dict) -> None:
    t = figures["train"]
    print(f"training: {t['seconds']:.0f} s, {t['steps']} steps, val {t['best_val_loss']:.3f}",
          file=sys.stderr)  # fmt: skip
    groups: dict = {}
    for row in figures["sampling"]:
        groups.setdefault((row["temperature"], row["grammar"]), []).append(row)
    print("temp  grammar  valid (median, range)  tunes/s  bars  final  tonic  copied 8-grams",
          file=sys.stderr)  # fmt: skip
    for (temperature, grammar), rows in groups.items():
        valid = sorted(r["valid"] for r in rows)
        speed = statistics.median(r["tunes_per_second"] for r in rows)
        stats = [r["stats"] for r in rows]
        print(
            f"{temperature:<5} {'on' if grammar else 'off':<8} "
            f"{statistics.median(valid):>5} ({valid[0]}-{valid[-1]})          {speed:>7.1f}  "
            f"{statistics.median(s['bars_median'] for s in stats):>4}  "
            f"{statistics.median(s['final_bar'] for s in stats):>5.0%}  "
            f"{statistics.median(s['tonic_end'] for s in stats):>5.0%}  "
            f"{statistics.median(r['mean_copied_8grams'] for r in rows):.0%}",
            file=sys.stderr,
        )
    c = figures["corpus_stats"]
    print(f"corpus: bars {c['bars_median']}, final bar {c['final_bar']:.0%}, "
          f"tonic {c['tonic_end']:.0%}", file=sys.stderr)  # fmt: skip
    for name, found in figures["requests"].items():
        meter = found.get("in_dance_meter")
        print(f"{name}: {found['as_asked']:.0%} as asked, {found['valid']} valid"
              + (f", {meter:.0%} in a meter of their rhythm" if meter is not None else ""),
              file=sys.stderr)  # fmt: skip
    print(f"corpus ceiling: {figures['corpus_ceiling']['valid_fraction']:.1%}", file=sys.stderr)
    print(f"wrote {RESULTS / 'music-latest.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
