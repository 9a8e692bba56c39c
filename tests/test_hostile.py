"""Hostile input: odd corpora and fuzzed options work or fail in one line, never a traceback."""

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargen.cli import cli
from tests.cli_helpers import TINY, run, train


@pytest.mark.parametrize(
    "name, content",
    [
        ("nul.txt", b"a\x00b\x00c\x00 line\n" * 60),
        ("crlf.txt", b"one line\r\ntwo lines\r\n" * 60),
        ("bom.txt", b"\xef\xbb\xbf" + b"with a byte order mark\n" * 60),
        ("same.txt", b"a" * 2000),
        ("long-line.txt", b"no newline at all, just one very long line " * 200),
        ("controls.txt", b"bell\x07 tab\t vertical\x0b form\x0c escape\x1b[0m\n" * 60),
    ],
)
def test_odd_but_valid_corpora_train_and_sample(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    train(path, "odd")
    result = run("sample", "odd", "--length", "40", "--seed", "0")
    text = result.stdout_bytes.decode()  # .stdout would turn each "\r\n" into "\n"
    assert result.exit_code == 0 and len(text) == 41
    assert "\ufeff" not in result.stdout  # the byte order mark is not part of the text


def test_one_character_corpus_is_a_one_line_error(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("x")
    result = run("train", path, *TINY)
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert "fewer than one window" in line


def test_a_huge_prime_is_run_in_pieces(corpus):
    train(corpus, "bard")
    prime = corpus.read_text() * 5  # tens of thousands of characters
    result = run("sample", "bard", "--prime", prime, "--length", "10", "--seed", "1")
    assert result.exit_code == 0 and result.stdout.startswith(prime)


@pytest.fixture
def bard(corpus):
    train(corpus, "bard")
    return "bard"


values = st.one_of(
    st.text(max_size=8),
    st.integers(-5, 40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    option=st.sampled_from(
        [
            "--temperature",
            "--top-k",
            "--top-p",
            "--seed",
            "--stop",
            "--prime",
            "--num",
            "--weights",
            "--beam",
        ]
    ),
    value=values,
)
def test_fuzzed_sampling_options_give_text_or_a_one_line_error(bard, option, value):
    result = CliRunner().invoke(cli, ["sample", bard, option, value, "--length", "5"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    if result.exit_code != 0:
        assert result.exit_code in (1, 2)
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("Error: ")
