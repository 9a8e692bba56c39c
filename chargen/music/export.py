"""Tunes out: MIDI through music21, WAV through timidity or fluidsynth, SVG sheet music through
abcm2ps.

Each tool is looked for before any work starts (``check_tools``) and named with its Debian package
when missing. Nothing here samples or checks tunes.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from chargen.errors import MusicError
from chargen.music.check import parse_with_music21
from chargen.music.notation import BAR_LINE, compound, headers, split_header


def write_midi(tune: str, path: str | Path) -> Path:
    """A standard MIDI file of ``tune``: through music21 (``playable``: with a tempo and the
    repeat starts music21 needs), else through abc2midi where it is installed."""
    path = Path(path)
    try:
        return _midi_by_music21(playable(tune), path)
    except MusicError as exc:
        if not shutil.which("abc2midi"):
            raise
        reason = exc
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "tune.abc"
        source.write_text(_with_tempo(tune) + "\n", encoding="utf-8")
        try:
            _run_tool(["abc2midi", str(source), "-o", str(path), "-silent"], path)
        except MusicError:
            raise reason from None
    return path


def _midi_by_music21(tune: str, path: Path) -> Path:
    score = parse_with_music21(tune)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            score.write("midi", fp=str(path))
        return path
    except Exception:  # music21's MIDI writer fails in its own ways on odd scores
        pass
    # Most failures are repeats music21 cannot expand (an end repeat with no matching start):
    # play the music straight through instead.
    from music21 import bar

    for measure in score.recurse().getElementsByClass("Measure"):
        for side in ("leftBarline", "rightBarline"):
            if isinstance(getattr(measure, side), bar.Repeat):
                setattr(measure, side, bar.Barline("regular"))
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            score.write("midi", fp=str(path))
    except Exception as exc:
        message = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
        raise MusicError(f"music21 cannot make MIDI of it ({message})") from None
    return path


TEMPOS = {
    "reel": "1/2=100",
    "jig": "3/8=116",
    "slip jig": "3/8=120",
    "hornpipe": "1/4=160",
    "strathspey": "1/4=130",
    "air": "1/4=80",
    "song": "1/4=96",
}
"""Tempos (Q:) for playing a tune with none, by rhythm: about what a session plays them at."""


def playable(tune: str) -> str:
    """``tune`` as music21 should play it: a tempo where it has none (``TEMPOS``; 120 quarter
    notes a minute otherwise), and a start repeat ``|:`` wherever an end repeat ``:|`` follows
    an earlier part with none (``A :| B :|``: ABC repeats B alone; music21 would go back to the
    start of the tune)."""
    head, music = split_header(_with_tempo(tune))
    return "\n".join(head + [_open_repeats("\n".join(music))])


def _with_tempo(tune: str) -> str:
    fields = headers(tune)
    if "Q" in fields:
        return tune
    beat = "3/8=100" if compound(fields.get("M", "")) else "1/4=120"
    tempo = TEMPOS.get(fields.get("R", ""), beat)
    lines = tune.split("\n")
    at = next((i for i, line in enumerate(lines) if line.startswith("K:")), len(lines))
    return "\n".join(lines[:at] + [f"Q:{tempo}"] + lines[at:])


def _open_repeats(music: str) -> str:
    inserts, part_end, start_open = [], None, False
    for match in BAR_LINE.finditer(music):
        text = match.group(0)
        if text.startswith(":") and not start_open and part_end is not None:
            inserts.append(part_end)
        start_open = text.endswith(":") or (start_open and not text.startswith(":"))
        followed_by_ending = re.match(r"\s*\[?\d", music[match.end() :])
        ends_part = text.startswith(":") or text in ("||", "|]")
        if ends_part and not re.search(r"\d", text) and not followed_by_ending:
            part_end = match.end() + len(re.match(r"\s*", music[match.end() :]).group(0))
    for at in reversed(inserts):
        music = music[:at] + "|:" + music[at:]
    return music


SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
)


def check_tools(wav: bool = False, svg: bool = False) -> None:
    """Raise ``MusicError`` naming the package to install when an export's tool is missing."""
    try:
        import music21  # noqa: F401
    except ImportError:
        raise MusicError(
            "this needs music21: pip install music21 (or chargen[music]); "
            "abc check --no-parse checks headers and bars without it"
        ) from None
    if wav and not shutil.which("timidity") and not (shutil.which("fluidsynth") and _soundfont()):
        raise MusicError(
            "--wav needs timidity (Debian package timidity) or fluidsynth with a General "
            "MIDI soundfont (Debian packages fluidsynth and fluid-soundfont-gm)"
        )
    if svg and not shutil.which("abcm2ps"):
        raise MusicError("--svg needs abcm2ps (Debian package abcm2ps)")


def _soundfont() -> str | None:
    return next((s for s in SOUNDFONTS if Path(s).is_file()), None)


def write_wav(midi: str | Path, path: str | Path) -> Path:
    """A WAV rendering of a MIDI file, with timidity or else fluidsynth and a GM soundfont."""
    midi, path = Path(midi), Path(path)
    check_tools(wav=True)
    if shutil.which("timidity"):
        command = ["timidity", "-Ow", "-o", str(path), str(midi)]
    else:
        command = ["fluidsynth", "-ni", "-F", str(path), "-r", "44100", _soundfont(), str(midi)]
    _run_tool(command, path)
    return path


def write_svg(tune: str, path: str | Path) -> Path:
    """Sheet music of ``tune`` as SVG, engraved by abcm2ps."""
    check_tools(svg=True)
    path = Path(path)
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "tune.abc"
        source.write_text(tune + "\n", encoding="utf-8")
        _run_tool(["abcm2ps", "-g", "-O", str(Path(scratch) / "page"), str(source)], None)
        pages = sorted(Path(scratch).glob("page*.svg"))
        if not pages:
            raise MusicError("abcm2ps wrote no sheet music for this tune")
        shutil.move(str(pages[0]), path)  # a folk tune fits on one page
    return path


def _run_tool(command: list[str], output: Path | None, timeout: float = 120.0) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MusicError(f"{command[0]} took more than {timeout:g}s") from None
    if done.returncode != 0 or (output is not None and not output.is_file()):
        lines = (done.stderr or done.stdout).strip().splitlines()
        errors = [line for line in lines if "error" in line.lower()]  # not its warnings
        detail = (errors or lines or [f"exit status {done.returncode}"])[0 if errors else -1]
        raise MusicError(f"{command[0]} failed: {detail}")
