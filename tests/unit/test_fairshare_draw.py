"""The tie draw of fair share: a tied project wins as often as the message's own."""

from __future__ import annotations

from types import SimpleNamespace

from imageport.workers.fairshare import _loses_draw


def test_a_tie_is_drawn_between_the_entrants_and_no_tie_is_never_lost():
    tied = SimpleNamespace(waiting=["a", "b"], counts={"a": 1, "b": 1})
    lost = sum(_loses_draw(tied, "a", 1) for _ in range(4000))  # type: ignore[arg-type]
    assert 1700 < lost < 2300  # one other entrant: half the draws (binomial, > 9 sigma apart)

    ahead = SimpleNamespace(waiting=["a", "b"], counts={"a": 1, "b": 2})
    assert not any(_loses_draw(ahead, "a", 1) for _ in range(200))  # type: ignore[arg-type]
