import pytest

from chargen.errors import CorpusError
from chargen.files import read_text


def test_non_utf8_corpus_error_says_where(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"first line\nsecond caf\xe9 line\n")
    with pytest.raises(CorpusError, match=r"line 2, column 11"):
        read_text(path)


def test_byte_order_mark_is_dropped_and_crlf_kept(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfone\r\ntwo\r\n")
    assert read_text(path) == "one\r\ntwo\r\n"
