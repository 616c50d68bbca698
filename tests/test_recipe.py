import pytest

from slimformer import Distill, Heads, Int8, LowRank, Prune, Vocab
from slimformer.errors import RecipeError
from slimformer.recipe import parse, to_text


def test_parse_full_grammar():
    steps = parse("vocab(corpus=/tmp/c.txt)+heads(keep=0.5)+lowrank(ratio=0.5, fisher=true)+distill(minutes=10)+int8")
    assert steps == [Vocab(corpus="/tmp/c.txt"), Heads(keep=0.5), LowRank(ratio=0.5, fisher=True),
                     Distill(minutes=10), Int8()]
    assert parse("heads(keep=2)")[0].keep == 2 and isinstance(parse("heads(keep=2)")[0].keep, int)
    assert parse(" int8 ( smooth = 0 ) ") == [Int8(smooth=0)]


def test_round_trip_text():
    text = "vocab+prune(flops=0.5)+distill(steps=100)+int8(fp32=2)"
    assert to_text(parse(text)) == text
    assert parse(to_text([Prune(flops=0.35), Int8()])) == [Prune(flops=0.35), Int8()]


@pytest.mark.parametrize("text, message", [
    ("int9", "unknown recipe step 'int9'"),
    ("int8(bits=4)", "step 'int8': unknown argument 'bits'"),
    ("heads", "step 'heads': missing argument keep"),
    ("heads(keep=1.5)", "heads: keep fraction must be in (0, 1]"),
    ("heads(keep=0)", "heads: keep count must be >= 1"),
    ("prune(flops=0)", "prune: flops must be a fraction in (0, 1]"),
    ("lowrank(ratio=0.5, rank=8)", "lowrank: give exactly one of"),
    ("distill", "distill: give exactly one of minutes= or steps="),
    ("distill(steps=3, device=tpu)", "distill: device must be cpu or cuda"),
    ("int8+heads(keep=0.5)", "step 'heads' must come before 'int8'"),
    ("int8+distill(steps=3)", "step 'distill' must come before 'int8'"),
    ("int8+int8", "step 'int8' appears twice"),
    ("int8(smooth)", "must be key=value"),
    ("", "empty recipe"),
    ("int8+", "bad recipe step"),
])
def test_bad_recipes_name_the_step(text, message):
    with pytest.raises(RecipeError) as e:
        parse(text)
    assert message in str(e.value)
