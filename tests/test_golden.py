"""Today's code against numbers pinned when the fixture was made (tests/golden/make.py): the
permutations and objective of one weight matching, the sha256 of every merged model, and a small
evaluation table, all from four committed base models. A failure means results changed: if that
is intended, regenerate the fixture and say why in the commit."""

import json

import numpy as np
import pytest

from tests.golden.compute import HERE, compute


@pytest.fixture(scope="module")
def pinned_and_now():
    return json.loads((HERE / "expected.json").read_text()), compute()


def test_weight_matching_permutations_and_objective_are_pinned(pinned_and_now):
    pinned, now = pinned_and_now
    assert now["perms"] == pinned["perms"]
    np.testing.assert_allclose(now["objective"], pinned["objective"], rtol=1e-12)


def test_merged_weights_are_bit_identical_to_the_pinned_ones(pinned_and_now):
    pinned, now = pinned_and_now
    assert now["merged_sha256"] == pinned["merged_sha256"]


def test_the_evaluation_table_is_pinned(pinned_and_now):
    pinned, now = pinned_and_now
    assert [r[:3] for r in now["evaluation"]] == [r[:3] for r in pinned["evaluation"]]
    # Accuracies are exact counts over 100 samples; attack norms and bounds are float32 sums.
    np.testing.assert_allclose([r[3] for r in now["evaluation"]], [r[3] for r in pinned["evaluation"]],
                               rtol=1e-5, atol=1e-6)
