"""pglab.checks: each check returns the value in its canonical type or raises ConfigError
(a ValueError) whose one-line message names the field, the value and the rule."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from pglab import checks
from pglab.checks import FLOAT32_MAX, ConfigError


def _fails(message: str, check, *args, **kwargs) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$") as caught:
        check(*args, **kwargs)
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)


def test_integers():
    assert checks.integer("n", 3) == 3 and type(checks.integer("n", np.int64(3))) is int
    assert checks.positive_int("n", np.int32(2)) == 2
    _fails("n must be an integer, got True", checks.integer, "n", True)
    _fails("n must be an integer, got 2.0", checks.integer, "n", 2.0)  # records what ran
    _fails("n must be an integer >= 2, got 1", checks.integer, "n", 1, minimum=2)
    _fails("n must be an integer <= 5, got 6", checks.integer, "n", 6, maximum=5)
    _fails(
        "n_trajectories must be a positive integer, got 0", checks.positive_int, "n_trajectories", 0
    )
    _fails("n must be a positive integer, got '3'", checks.positive_int, "n", "3")


def test_seed():
    assert checks.seed("seed", 2**63 - 1) == 2**63 - 1
    _fails("seed must be an integer >= 0, got -1", checks.seed, "seed", -1)
    _fails(f"seed must be an integer <= {2**63 - 1}, got {2**63}", checks.seed, "seed", 2**63)
    _fails("seed must be an integer, got 1.7", checks.seed, "seed", 1.7)


def test_reals_and_intervals():
    assert checks.real("x", 2) == 2.0 and type(checks.real("x", np.float32(0.5))) is float
    _fails("x must be a number, got 'abc'", checks.real, "x", "abc")
    _fails("x must be a number, got False", checks.real, "x", False)
    _fails("x must be finite, got nan", checks.real, "x", math.nan)
    _fails("x must be finite and >= 0, got -1", checks.real, "x", -1, 0.0)
    _fails(
        "x must be finite and in [0, 1), got 1.0", checks.real, "x", 1.0, 0.0, 1.0, high_open=True
    )
    _fails("gamma must be finite and in [0, 1], got 1.5", checks.discount, "gamma", 1.5)
    _fails("p must be finite and in (0, 1], got 0.0", checks.probability, "p", 0.0, open_low=True)
    _fails("step_size must be finite and > 0, got 0", checks.positive_real, "step_size", 0)
    assert checks.positive_real("step_size", FLOAT32_MAX, maximum=FLOAT32_MAX) == FLOAT32_MAX
    _fails(
        "step_size must be finite and in (0, 3.40282e+38], got 1e+39",
        checks.positive_real,
        "step_size",
        1e39,
        maximum=FLOAT32_MAX,
    )
    assert FLOAT32_MAX == float(np.finfo(np.float32).max)


def test_choices_lists_and_switches():
    assert checks.one_of("optimizer", "adam", ("sgd", "adam")) == "adam"
    _fails(
        "unknown optimizer 'adm' (did you mean 'adam'?); choose one of: sgd, adam",
        checks.one_of,
        "optimizer",
        "adm",
        ("sgd", "adam"),
    )
    _fails(
        "unknown optimizer 3; choose one of: sgd, adam",
        checks.one_of,
        "optimizer",
        3,
        ("sgd", "adam"),
    )
    assert checks.non_empty("xs", (1, 2)) == [1, 2]
    _fails("xs must list at least one value, got []", checks.non_empty, "xs", [])
    assert checks.did_you_mean("chian", ["chain", "garnet"]) == " (did you mean 'chain'?)"
    assert checks.did_you_mean("zzz", ["chain"]) == ""
    assert checks.boolean("pit", False) is False
    _fails("pit must be true or false, got 1", checks.boolean, "pit", 1)
    _fails("pit must be true or false, got 'yes'", checks.boolean, "pit", "yes")


def test_instance_names_the_value_and_its_type():
    assert checks.instance("name", "x", str) == "x"
    assert checks.instance("n", 3, (float, int)) == 3
    _fails("name must be a str, got 3 (int)", checks.instance, "name", 3, str)
    _fails(
        "x must be a float or int, got None (NoneType)", checks.instance, "x", None, (float, int)
    )
    long = [0.5] * 100
    with pytest.raises(
        ConfigError, match=r"^mdp must be a str, got \[0\.5, 0\.5, .*\.\.\. \(list\)$"
    ):
        checks.instance("mdp", long, str)
    with pytest.raises(ConfigError) as caught:
        checks.instance("mdp", long, str)
    assert len(str(caught.value)) < 120
