"""hostd.garden.decide: web garden growth on saturation and keep-alive rebalancing."""
from __future__ import annotations

from hostd.garden import NOTHING, ROOM, SATURATED, Decision, Sample, decide


def s(key, busy, conns):
    return Sample(key, busy, conns)


def test_one_saturated_worker_grows_the_garden():
    assert decide([s("a", 0.97, 8)], processes=2, starting=0) == Decision(True, None, 0)


def test_no_growth_at_the_garden_size_or_while_one_is_starting():
    assert decide([s("a", 1.0, 8)], processes=1, starting=0) == NOTHING
    assert decide([s("a", 1.0, 8), s("b", 1.0, 8)], processes=2, starting=0) == NOTHING
    assert decide([s("a", 1.0, 8)], processes=3, starting=1).grow is False


def test_growth_needs_every_worker_saturated():
    d = decide([s("a", 1.0, 2), s("b", SATURATED - 0.01, 2)], processes=3, starting=0)
    assert d.grow is False


def test_saturated_worker_sheds_half_the_difference_to_a_worker_with_room():
    d = decide([s("a", 0.95, 8), s("b", 0.0, 0)], processes=2, starting=0)
    assert d == Decision(False, "a", 4)
    d = decide([s("a", 0.95, 8), s("b", ROOM, 3), s("c", 0.2, 5)], processes=4, starting=0)
    assert (d.shed_from, d.shed) == ("a", 2)     # towards the one holding fewest


def test_at_least_one_connection_moves_and_never_from_a_single_connection():
    assert decide([s("a", 1.0, 2), s("b", 0.1, 1)], 2, 0) == Decision(False, "a", 1)
    assert decide([s("a", 1.0, 1), s("b", 0.0, 0)], 2, 0) == NOTHING


def test_no_shed_without_saturation_or_without_room():
    assert decide([s("a", 0.8, 8), s("b", 0.0, 0)], 2, 0) == NOTHING
    assert decide([s("a", 1.0, 8), s("b", ROOM + 0.01, 0)], 3, 0) == NOTHING


def test_empty_decides_nothing_and_growth_excludes_shedding():
    assert decide([], 4, 0) == NOTHING
    # growth needs every worker saturated, shedding one with room: never both at once
    d = decide([s("a", 1.0, 6), s("b", 0.95, 1)], processes=3, starting=0)
    assert d == Decision(True, None, 0)
