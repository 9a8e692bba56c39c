"""chargen's benchmarks: quality per CPU-minute, throughput, sampling, start-up, memory, tokenizing.

Run on a quiet machine (nothing else busy: two torch threads that share a core with another
process slow down many times over):

    python benchmarks/run.py                      # everything, three times: about 20 minutes
    python benchmarks/run.py --only sampling tokenize
    python benchmarks/run.py --only scale         # 1 GB generated corpus: tokenizing, memory
    python benchmarks/run.py --repeats 1 --train-time 60
    python benchmarks/run.py --only host          # is this machine steady enough? (20 s)
    python benchmarks/run.py --only quality sampling --cell lnlstm
    python benchmarks/run.py --only quality --level bpe  # losses per character compare levels
    python benchmarks/run.py --only quality --level bpe --train-steps 1300  # host speed out

Every figure is measured ``--repeats`` times (3 by default; quality with seeds 1337, 7 and 3) and
reported as the median with the lowest and highest run, the median compared with its target.
Prints a table on stderr and writes every run's figures to benchmarks/results/latest.json.
The corpus defaults to ../shared/corpora/tinyshakespeare.txt; validation is its last 10%.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
RESULTS = ROOT / "benchmarks" / "results"
CHARGEN = [sys.executable, "-m", "chargen"]


def chargen(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*CHARGEN, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if check and result.returncode != 0:
        raise SystemExit(f"chargen {' '.join(args)} failed:\n{result.stderr}")
    return result


# --------------------------------------------------------------------------------- quality


QUALITY_SEEDS = (1337, 7, 3)


def bench_quality(
    corpus: Path,
    seconds: float,
    env: dict,
    seed: int = 1337,
    cell: str | None = None,
    level: str | None = None,
    steps: int | None = None,
) -> dict:
    """Default settings (or another ``cell`` or ``level``), --time SECONDS (or --max-steps
    ``steps``), then `chargen eval` on the validation part. Its loss per character is the figure
    to compare across levels. A fixed step count takes the host's speed out of the figure, and
    with it where in an epoch the run stops, which moves tinyshakespeare's figure by up to 0.03
    (its validation play is read by one stream, part of each epoch: docs/experiments.md,
    2026-12-07, late night)."""
    text = corpus.read_text(encoding="utf-8")
    val = Path(env["CHARGEN_CHECKPOINTS"]) / "val.txt"
    val.write_text(text[int(len(text) * 0.9) :], encoding="utf-8")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    train = chargen(
        "train",
        str(corpus),
        "--name",
        "bench",
        *(("--max-steps", str(steps)) if steps else ("--time", f"{seconds}s")),
        "--seed",
        str(seed),
        "--json",
        "--quiet",
        "--force",
        *(("--cell", cell) if cell else ()),
        *(("--level", level) if level else ()),
        env=env,
    )
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = json.loads(train.stdout)
    evaluation = json.loads(chargen("eval", "bench", str(val), "--json", env=env).stdout)
    return {
        "train_seconds": summary["seconds"],
        "steps": summary["steps"],
        "train_step_tokens_per_sec": summary["step_tokens_per_sec"],
        "val_loss": evaluation["nats_per_token"],
        "val_bpc": evaluation["bits_per_char"],
        "val_nats_per_char": evaluation["bits_per_char"] * math.log(2),
        "peak_rss_mb": max(peak_kb, before) / 1024,
    }


# ------------------------------------------------------------------------------ throughput


def plain_lstm_tokens_per_sec(
    ids: torch.Tensor, vocab: int, hidden: int, batch: int, window: int, seconds: float
) -> float:
    """The baseline: a plain fp32 nn.LSTM training loop of the same size, carried state, AdamW."""
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(vocab, 64)
    lstm = torch.nn.LSTM(64, hidden, batch_first=True)
    head = torch.nn.Linear(hidden, vocab)
    params = [*embedding.parameters(), *lstm.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    length = (len(ids) - 1) // batch
    inputs = ids[: batch * length].view(batch, length)
    targets = ids[1 : batch * length + 1].view(batch, length)
    state, tokens, position = None, 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if position + window > length:
            position, state = 0, None
        x = inputs[:, position : position + window]
        y = targets[:, position : position + window]
        out, state = lstm(embedding(x), state)
        loss = torch.nn.functional.cross_entropy(head(out).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        state = tuple(s.detach() for s in state)
        position += window
        tokens += x.numel()
    return tokens / (time.perf_counter() - started)


def chargen_tokens_per_sec(corpus: Path, seconds: float, env: dict) -> dict:
    """chargen's default config. Its speed is taken over the training steps alone (the summary's
    ``step_tokens_per_sec``), as the baseline's is: not the validation pass and the saving at the
    end, which the baseline does not do."""
    result = chargen(
        "train",
        str(corpus),
        "--name",
        "throughput",
        "--time",
        f"{seconds}s",
        "--eval-every",
        "1000000",
        "--json",
        "--quiet",
        "--force",
        env=env,
    )
    return json.loads(result.stdout)


def bench_throughput(corpus: Path, seconds: float, env: dict) -> dict:
    """chargen and the baseline in turn, so that a slow spell of the machine falls on both; the
    baseline at the width chargen's run took here."""
    import chargen
    from chargen.config import TrainConfig
    from chargen.text.tokenizer import Tokenizer

    ours = chargen_tokens_per_sec(corpus, seconds, env)["step_tokens_per_sec"]
    if ours is None:
        raise SystemExit("throughput: chargen trained no step; give a longer --throughput-time")
    runs = chargen.list_runs(env["CHARGEN_CHECKPOINTS"])
    width = next(r for r in runs if r.name == "throughput").model_config.hidden_size
    text = corpus.read_text(encoding="utf-8")
    tokenizer = Tokenizer.from_characters(set(text))
    ids = torch.from_numpy(tokenizer.encode(text))
    train = TrainConfig()
    baseline = plain_lstm_tokens_per_sec(
        ids, tokenizer.vocab_size, width, train.batch_size, train.seq_len, seconds
    )
    return {
        "width": width,
        "baseline_fp32_tokens_per_sec": baseline,
        "chargen_tokens_per_sec": ours,
        "speedup": ours / baseline,
    }


# -------------------------------------------------------------------------------- sampling


def bench_sampling(env: dict) -> dict:
    """Per-token time of short and long samples, one stream and 64, from the default model."""
    import chargen

    model = chargen.load("bench", checkpoint_dir=env["CHARGEN_CHECKPOINTS"])

    def per_token(length: int, num: int, repeats: int) -> float:
        best = math.inf
        for _ in range(repeats):
            started = time.perf_counter()
            model.generate_many(num, "ROMEO:", length, temperature=0.8, seed=0)
            best = min(best, (time.perf_counter() - started) / length)
        return best

    per_token(200, 1, 1)  # warm-up
    short = per_token(100, 1, 5)
    long = per_token(10_000, 1, 1)
    batch = per_token(1_000, 64, 2)
    return {
        "single_stream_tokens_per_sec": 1 / long,
        "per_token_us_100": short * 1e6,
        "per_token_us_10000": long * 1e6,
        "long_over_short": long / short,
        "streams64_tokens_per_sec": 64 / batch,
    }


# --------------------------------------------------------------------------------- startup


def bench_startup(env: dict) -> dict:
    helps = []
    for _ in range(5):
        started = time.perf_counter()
        chargen("--help", env=env)
        helps.append(time.perf_counter() - started)
    firsts = []
    for _ in range(3):
        started = time.perf_counter()
        process = subprocess.Popen(
            [*CHARGEN, "sample", "bench", "--length", "50", "--seed", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        process.stdout.read(1)
        firsts.append(time.perf_counter() - started)
        process.communicate()
    return {"help_seconds": min(helps), "first_token_seconds": min(firsts)}


# ------------------------------------------------------------------------------ tokenizing


def bench_tokenize(corpus: Path) -> dict:
    from chargen.text.tokenizer import Tokenizer

    text = corpus.read_text(encoding="utf-8")
    megabytes = len(text.encode("utf-8")) / 1e6
    result = {}
    for level in ("char", "word", "bpe"):
        if level == "char":
            trained = Tokenizer.from_characters(set(text))
        else:
            trained = Tokenizer.train_from_chunks([text], level, 512 if level == "bpe" else 10_000)
        best = math.inf
        for _ in range(3):
            tokenizer = Tokenizer.from_json(trained.to_json(), level)  # nothing cached yet
            started = time.perf_counter()
            tokenizer.encode(text)
            best = min(best, time.perf_counter() - started)
        result[f"{level}_mb_per_sec"] = megabytes / best
        result[f"{level}_seconds"] = best
    return result


# ----------------------------------------------------------------------------------- scale


def make_big_corpus(source: Path, path: Path, megabytes: int) -> None:
    """``megabytes`` of text made of the source's lines in a seeded random order."""
    import random

    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    rng = random.Random(0)
    target = megabytes * 1_000_000
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < target:
            block = rng.choices(lines, k=20_000)
            text = "".join(block)
            out.write(text)
            written += len(text.encode("utf-8"))


def bench_scale(corpus: Path, megabytes: int, env: dict) -> dict:
    """Tokenize a big generated corpus (fresh cache) and train on it briefly; peak RSS."""
    from chargen.text import corpus as corpus_module

    scratch = Path(env["CHARGEN_CHECKPOINTS"])
    big = scratch / "big.txt"
    make_big_corpus(corpus, big, megabytes)
    size = big.stat().st_size
    cache = scratch / "cache"
    started = time.perf_counter()
    corpus_module.prepare([big], None, "char", 10_000, 1, 0.1, cache=cache)
    first = time.perf_counter() - started
    started = time.perf_counter()
    _, arrays = corpus_module.prepare([big], None, "char", 10_000, 1, 0.1, cache=cache)
    again = time.perf_counter() - started
    peak_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    train_env = dict(env, CHARGEN_CACHE=str(cache))
    chargen(
        "train",
        str(big),
        "--name",
        "big",
        "--max-steps",
        "200",
        "--eval-every",
        "100",
        "--quiet",
        "--force",
        env=train_env,
    )
    peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, peak_before)
    return {
        "corpus_mb": size / 1e6,
        "tokenize_mb_per_sec": size / 1e6 / first,
        "tokenize_seconds": first,
        "cached_open_seconds": again,
        "train_peak_rss_mb": peak / 1024,
        "token_dtype": str(arrays.train.dtype),
        **bench_eval_scale(corpus, big, 200, env),
    }


EVAL_PROBE = """
import re, sys, time, chargen
model = chargen.load(sys.argv[1])
started = time.perf_counter()
score, _ = model.score_file(sys.argv[2])
seconds = time.perf_counter() - started
peak = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print(seconds, peak / 1024, score.tokens)
"""


def bench_eval_scale(corpus: Path, source: Path, megabytes: int, env: dict) -> dict:
    """``chargen eval``'s path (``Model.score_file``) on the first ``megabytes`` of ``source``
    with a small model (hidden 64, trained on ``corpus``): peak memory (its own, from /proc)
    and speed."""
    scratch = Path(env["CHARGEN_CHECKPOINTS"])
    text = scratch / "eval.txt"
    with open(source, "rb") as src, open(text, "wb") as out:
        out.write(src.read(megabytes * 1_000_000))
    small = ["--hidden", "64", "--embedding", "16", "--time", "10s", "--quiet", "--force"]
    chargen("train", str(corpus), "--name", "small", *small, env=env)
    probe = subprocess.run(
        [sys.executable, "-c", EVAL_PROBE, str(scratch / "small"), str(text)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    seconds, peak, _ = probe.stdout.split()
    return {
        "eval_mb": text.stat().st_size / 1e6,
        "eval_mb_per_sec": text.stat().st_size / 1e6 / float(seconds),
        "eval_peak_rss_mb": float(peak),
    }


# ------------------------------------------------------------------------------------ host

CORE_PROBE = """
import json, os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
start, end = float(sys.argv[2]), float(sys.argv[3])
while time.time() < start:
    time.sleep(0.001)
rates = []
while time.time() < end:
    began, loops = time.perf_counter(), 0
    while time.perf_counter() - began < 0.25:
        total = 0
        for i in range(2000):
            total += i
        loops += 1
    rates.append(loops / (time.perf_counter() - began))
print(json.dumps(rates))
"""


def bench_host(seconds: float = 20.0) -> dict:
    """How steady the machine's cores are: a pure-Python loop pinned to each core, all cores at
    once, its speed taken every quarter second.

    On the machines this project is measured on, each core has slow spells (a loop 15-45% below
    its median) that come and go within seconds, independently of the other core. Training's
    two pinned workers wait for the slower one every step, so these spells move chargen's
    figures from run to run; ``slow_share`` says how much of the time they covered."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) < 2:
        return {}
    start = time.time() + 1.0
    probes = [
        subprocess.Popen(
            [sys.executable, "-c", CORE_PROBE, str(core), str(start), str(start + seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for core in cores
    ]
    series = [json.loads(probe.communicate()[0]) for probe in probes]
    length = min(len(rates) for rates in series)
    medians = [statistics.median(rates) for rates in series]
    slow = [
        any(rates[k] < 0.85 * median for rates, median in zip(series, medians, strict=True))
        for k in range(length)
    ]
    # Work split evenly waits for the slowest core; work shared out by speed would not.
    even = sum(max(1 / rates[k] for rates in series) for k in range(length))
    shared = sum(len(series) / sum(rates[k] for rates in series) for k in range(length))
    spread = [min(rates) / median for rates, median in zip(series, medians, strict=True)]
    return {
        "python_loops_per_sec": statistics.median(medians),  # a loop: 2,000 additions
        "slow_share": sum(slow) / length,
        "slowest_over_median": min(spread),
        "even_split_loss": even / shared - 1,
    }


# ------------------------------------------------------------------------------------ main

TARGETS = {
    ("quality", "val_nats_per_char"): ("<=", 1.40),
    ("quality", "peak_rss_mb"): ("<=", 1024),
    ("throughput", "speedup"): (">=", 2.0),
    ("sampling", "single_stream_tokens_per_sec"): (">=", 5000),
    ("sampling", "streams64_tokens_per_sec"): (">=", 100_000),
    ("sampling", "long_over_short"): ("<=", 1.1),
    ("startup", "help_seconds"): ("<=", 0.3),
    ("startup", "first_token_seconds"): ("<=", 1.5),
    ("tokenize", "char_mb_per_sec"): (">=", 50),
    ("tokenize", "word_mb_per_sec"): (">=", 10),
    ("scale", "tokenize_mb_per_sec"): (">=", 50),
    ("scale", "train_peak_rss_mb"): ("<=", 2048),
    ("scale", "eval_peak_rss_mb"): ("<=", 1024),
    ("scale", "eval_mb_per_sec"): (">=", 5),
}
GROUPS = ("host", "quality", "throughput", "sampling", "startup", "tokenize", "scale")
DEFAULT_GROUPS = GROUPS[:-1]  # scale writes a 1 GB corpus and 2 GB of tokens: ask for it


def measure(group: str, run: int, args, env: dict) -> dict:
    """The figures of ``group`` in run number ``run`` (from 0)."""
    if group == "host":
        print("host: how steady the cores are ...", file=sys.stderr)
        return bench_host()
    if group == "quality":
        seed = QUALITY_SEEDS[run % len(QUALITY_SEEDS)]
        limit = f"{args.train_steps} steps" if args.train_steps else f"{args.train_time:.0f}s"
        print(f"quality: {limit} at seed {seed} ...", file=sys.stderr)
        return bench_quality(
            args.corpus, args.train_time, env, seed, args.cell, args.level, args.train_steps
        )
    if group == "throughput":
        print("throughput: baseline loop and chargen ...", file=sys.stderr)
        return bench_throughput(args.corpus, args.throughput_time, env)
    if group == "sampling":
        print("sampling ...", file=sys.stderr)
        return bench_sampling(env)
    if group == "startup":
        return bench_startup(env)
    if group == "tokenize":
        return bench_tokenize(args.corpus)
    print(f"scale: {args.scale_mb} MB corpus ...", file=sys.stderr)
    return bench_scale(args.corpus, args.scale_mb, env)


def summarize(runs: list[dict]) -> dict:
    """Per figure: the median of the runs, the lowest and highest, and every run."""
    summary = {}
    for key in runs[0]:
        values = [run[key] for run in runs]
        if all(isinstance(v, (int, float)) for v in values):
            ordered = sorted(values)
            middle = len(ordered) // 2
            median = (
                ordered[middle] if len(ordered) % 2 else sum(ordered[middle - 1 : middle + 1]) / 2
            )
            summary[key] = {"median": median, "min": ordered[0], "max": ordered[-1], "runs": values}
        else:
            summary[key] = {"median": values[0], "runs": values}
    return summary


def print_table(results: dict) -> None:
    print(f"\n{'figure':<40} {'median':>13} {'lowest – highest':>27}  target", file=sys.stderr)
    for group, figures in results.items():
        for key, figure in figures.items():
            value, mark = figure["median"], ""
            if (target := TARGETS.get((group, key))) and isinstance(value, (int, float)):
                op, bound = target
                ok = value <= bound if op == "<=" else value >= bound
                mark = f"{op} {bound:g}  {'ok' if ok else 'MISSED'}"
            if isinstance(value, (int, float)):
                spread = f"{figure['min']:,.4f} – {figure['max']:,.4f}"
                print(
                    f"{group + '.' + key:<40} {value:>13,.4f} {spread:>27}  {mark}", file=sys.stderr
                )
            else:
                print(f"{group + '.' + key:<40} {value:>13}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--train-time", type=float, default=120.0)
    parser.add_argument("--train-steps", type=int, help="quality: this many steps, not a time")
    parser.add_argument("--throughput-time", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of every figure")
    parser.add_argument("--only", nargs="*", choices=GROUPS, default=list(DEFAULT_GROUPS))
    parser.add_argument("--scale-mb", type=int, default=1000, help="size of the scale corpus")
    parser.add_argument("--cell", help="the trained models' cell (quality, sampling)")
    parser.add_argument("--level", help="the trained models' tokenizer level (quality, sampling)")
    args = parser.parse_args()
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    if args.train_steps is not None and args.train_steps < 1:
        raise SystemExit("--train-steps must be at least 1")
    if not args.corpus.is_file():
        raise SystemExit(f"{args.corpus}: no such corpus; pass --corpus")
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ, CHARGEN_CHECKPOINTS=scratch)
        if "quality" not in args.only and {"sampling", "startup"} & set(args.only):
            bench_quality(args.corpus, 5, env, cell=args.cell, level=args.level)  # to sample
        for run in range(args.repeats):
            for group in args.only:
                if group != "scale" or run == 0:
                    runs.setdefault(group, []).append(measure(group, run, args, env))
    results = {group: summarize(group_runs) for group, group_runs in runs.items()}
    print_table(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "corpus": str(args.corpus),
        "repeats": args.repeats,
        "cell": args.cell or "the default",
        "level": args.level or "the default",
        "train_steps": args.train_steps,
        "results": results,
    }
    (RESULTS / "latest.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'latest.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
