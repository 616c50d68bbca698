"""Every error a user can cause is a SlimformerError of the class that names its condition (the CLI prints it as
one line); one class per condition."""

import pytest

import slimformer
from slimformer.data import calibration_texts, read_sts_tsv
from slimformer.errors import DataFormatError, PoolingError, SlimformerError, StepNotApplicableError
from slimformer.model import SlimModel


def test_unknown_pooling_mode(tiny):
    with pytest.raises(PoolingError, match="pooling must be one of"):
        SlimModel(tiny.encoder, tiny.tokenizer, pooling="sum")
    assert issubclass(PoolingError, SlimformerError)


@pytest.mark.parametrize("text, message", [
    ("a\tb\tscore\nx\ty\t1.0\n", "header must be sentence1<TAB>sentence2<TAB>score"),
    ("sentence1\tsentence2\tscore\nx\ty\t1.0\n\nx\ty\thigh\n", "line 4: must be"),
    ("sentence1\tsentence2\tscore\nonly one column\n", "line 2: must be"),
])
def test_sts_file_with_a_bad_header_or_row(tmp_path, text, message):
    bad = tmp_path / "bad.tsv"
    bad.write_text(text)
    with pytest.raises(DataFormatError, match=message):
        read_sts_tsv(bad)


def test_sts_file_with_a_blank_line_reads(tmp_path):
    good = tmp_path / "ok.tsv"
    good.write_text("sentence1\tsentence2\tscore\n\nx\ty\t1.5\n")
    assert read_sts_tsv(good) == [("x", "y", 1.5)]


def test_calibration_file_that_is_not_text(tmp_path):
    path = tmp_path / "calib.bin"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DataFormatError, match="not UTF-8 text"):
        calibration_texts(path=path)


def test_vocab_on_a_vocab_pruned_model(tiny, sentences):
    pruned = slimformer.compress(tiny, "vocab", calib=sentences)
    with pytest.raises(StepNotApplicableError, match="already vocabulary-pruned or quantized"):
        slimformer.compress(pruned, "vocab", calib=sentences)
