import math

import pytest

from guidance_kit import (
    GuidanceKitError,
    compress_schedule,
    early_stop_schedule,
    full_schedule,
    interval_matched,
    interval_schedule,
    random_schedule,
    uniform_schedule,
)

TABLE = [
    ((50, 5, 2), [0, 2, 4, 8, 12, 18, 24, 32, 40, 48, 49], [2, 2, 4, 4, 6, 6, 8, 8, 8, 1, 1]),
    ((50, 10, 2), [0, 2, 8, 18, 32, 48, 49], [2, 6, 10, 14, 16, 1, 1]),
    ((25, 5, 2), [0, 1, 4, 9, 16, 23, 24], [1, 3, 5, 7, 7, 1, 1]),
    ((32, 5, 3), [0, 1, 4, 9, 18, 30, 31], [1, 3, 5, 9, 12, 1, 1]),
    ((10, 5, 2), [0, 2, 8, 9], [2, 6, 1, 1]),
]


def formula(n, skip, k):
    """The spec's formula, written independently: G = {⌊c·i^k⌋} ∪ {n−2, n−1}, c = n/m^k."""
    m = n // skip
    c = n / m**k
    return sorted({math.floor(c * i**k) for i in range(m)} | {n - 2, n - 1})


@pytest.mark.parametrize(("args", "steps", "weights"), TABLE)
def test_table_rows(args, steps, weights):
    s = compress_schedule(*args)
    assert s.guided_steps == steps
    assert [s.weight(j) for j in steps] == weights
    assert sum(s.weights) == args[0]


def test_multiplicity_and_n250_counts():
    s = compress_schedule(50, 5, 2, weight_mode="multiplicity")
    assert [s.weight(j) for j in s.guided_steps] == [2] + [1] * 10
    for k, count in ((1, 52), (2, 49), (5, 34)):
        s = compress_schedule(250, 5, k)
        assert s.num_guided == count and sum(s.weights) == 250


def test_properties_over_a_grid():
    for n in range(10, 401, 13):
        for skip in range(2, 15):
            if skip > n:
                continue
            sizes = []
            for k in (1, 1.5, 2, 3, 5):
                s = compress_schedule(n, skip, k)
                assert s.guided_steps == formula(n, skip, k), (n, skip, k)
                assert sum(s.weights) == n
                assert {0, n - 2, n - 1} <= set(s.guided_steps)
                sizes.append(s.num_guided)
            assert sizes == sorted(sizes, reverse=True), (n, skip, sizes)


def test_official_and_exact_arithmetic():
    official = set(compress_schedule(98, 2, 2).guided_steps)
    exact = set(compress_schedule(98, 2, 2, arithmetic="exact").guided_steps)
    assert sorted(official - exact) == [7, 31, 49] and sorted(exact - official) == [8, 32, 50]
    m = 200 // 3
    assert compress_schedule(200, 3, 2, arithmetic="exact").guided_steps == sorted(
        {200 * i * i // m**2 for i in range(m)} | {198, 199}
    )
    assert compress_schedule(200, 3, 2).guided_steps == formula(200, 3, 2)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_skip_one_is_full_guidance(k):
    s = compress_schedule(50, 1, k)
    assert s.guided == full_schedule(50).guided and set(s.weights) == {1.0}


def test_max_weight_and_n1():
    assert max(compress_schedule(50, 5, 2, max_weight=3).weights) == 3
    assert compress_schedule(1, 1).guided_steps == [0]


def test_interval_on_the_edm_grid():
    n, rho, hi, lo = 32, 7, 80.0, 0.002
    sigmas = [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)]
    assert interval_schedule(sigmas, 0.28, 1.61).guided_steps == list(range(17, 23))
    matched = interval_matched(sigmas, 6).guided_steps
    assert len(matched) == 6 and min(matched, key=lambda j: abs(math.log(sigmas[j]))) in matched


def test_ablation_schedules():
    assert uniform_schedule(10, 3).guided_steps == [1, 4, 7, 8, 9]
    assert early_stop_schedule(250).guided_steps == list(range(50))
    r = random_schedule(50, 11, seed=3)
    assert r.num_guided == 11 and r.is_guided(0) and r == random_schedule(50, 11, seed=3)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"n": 50, "skip": 0}, "skip"),
        ({"n": 50, "skip": 51}, "skip"),
        ({"n": 50, "k": 0}, "k"),
        ({"n": 0}, "n"),
        ({"n": 50, "weight_mode": "bogus"}, "weight_mode"),
        ({"n": 50, "k": 1.5, "arithmetic": "exact"}, "integer k"),
    ],
)
def test_bad_schedule_arguments(kwargs, word):
    with pytest.raises(GuidanceKitError, match=word):
        compress_schedule(**kwargs)
