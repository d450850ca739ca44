"""Data and brick names with control characters are refused when the brick or the collection is built: a NUL
would cut the name in a zip file (two outputs merged in a prediction file), a newline would split it in a log."""

from __future__ import annotations

import re

import pytest
from torch import nn

from torchbricks_lightning import BrickCollection, BrickNotTrainable, BrickTrainable
from torchbricks_lightning.errors import InvalidNameError

CONTROL = ["scores\x00a", "head0/lo\ngits", "a\tb", "delete\x7f", "\x1b[31mred"]


@pytest.mark.parametrize("name", CONTROL)
def test_data_names_with_a_control_character_are_refused_at_build(name: str) -> None:
    character = next(c for c in name if not c.isprintable())
    position = name.index(character)
    expected = rf"{re.escape(repr(name))} of BrickTrainable holds the control character {re.escape(repr(character))}"
    expected += rf"( \(NUL\))? at position {position}: names may not hold NUL"
    with pytest.raises(InvalidNameError, match=rf"The name in output_names {expected}"):
        BrickTrainable(nn.Identity(), input_names=["x"], output_names=[name])
    with pytest.raises(InvalidNameError, match=rf"The name in input_names {expected}"):
        BrickTrainable(nn.Identity(), input_names=[name], output_names=["y"])
    with pytest.raises(InvalidNameError, match=rf"The name in input_names {expected}"):
        BrickTrainable(nn.Identity(), input_names={"input": name}, output_names=["y"])


def test_two_outputs_that_differ_after_a_nul_are_refused_not_merged() -> None:
    with pytest.raises(InvalidNameError, match=r"'scores\\x00a' of BrickNotTrainable .* '\\x00' \(NUL\) at position 6"):
        BrickCollection(
            {
                "a": BrickNotTrainable(nn.Identity(), input_names=["x"], output_names=["scores\x00a"]),
                "b": BrickNotTrainable(nn.Identity(), input_names=["x"], output_names=["scores\x00b"]),
            }
        )


def test_brick_names_with_a_control_character_are_refused() -> None:
    brick = BrickNotTrainable(nn.Identity(), input_names=["x"], output_names=["y"])
    with pytest.raises(InvalidNameError, match=r"Brick name 'head\\x00' holds the control character '\\x00' \(NUL\)"):
        BrickCollection({"head\x00": brick})
    with pytest.raises(InvalidNameError, match=r"Brick name 'he\\nad' holds the control character '\\n' at position 2"):
        BrickCollection({"outer": {"he\nad": brick}})


def test_names_with_printable_unicode_are_kept() -> None:
    brick = BrickNotTrainable(nn.Identity(), input_names=["entrée"], output_names=["größe/ü ñ"])
    assert list(brick.output_names) == ["größe/ü ñ"]
