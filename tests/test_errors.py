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


def test_sts_file_with_a_bad_header_or_row(tmp_path):
    bad_header = tmp_path / "h.tsv"
    bad_header.write_text("a\tb\tscore\nx\ty\t1.0\n")
    with pytest.raises(DataFormatError, match="header must be sentence1<TAB>sentence2<TAB>score"):
        read_sts_tsv(bad_header)
    bad_row = tmp_path / "r.tsv"
    bad_row.write_text("sentence1\tsentence2\tscore\nx\ty\t1.0\n\nx\ty\thigh\n")
    with pytest.raises(DataFormatError, match="line 4: must be"):
        read_sts_tsv(bad_row)
    short_row = tmp_path / "s.tsv"
    short_row.write_text("sentence1\tsentence2\tscore\nonly one column\n")
    with pytest.raises(DataFormatError, match="line 2: must be"):
        read_sts_tsv(short_row)
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
