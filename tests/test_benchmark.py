"""lm.benchmark with fake sides on a fake clock: rotation order, paired ratios, spread, early stops."""

import pytest

from lm.benchmark import interleaved, paired_ratio, speed_ratios, spread


class FakeClock:
    """A clock that only moves when a side runs, by that side's scripted duration."""

    def __init__(self):
        self.now, self.calls = 0.0, []

    def __call__(self) -> float:
        return self.now

    def side(self, name: str, durations):
        it = iter(durations)

        def run():
            self.calls.append(name)
            self.now += next(it)
        return run


def test_rotating_order_and_warmup():
    clock = FakeClock()
    sides = {n: clock.side(n, [1.0] * 10) for n in "abc"}
    times = interleaved(sides, repeats=4, warmup=1, clock=clock)
    assert clock.calls == list("abc" "abc" "bca" "cab" "abc")  # warm-up round untimed, then rotated rounds
    assert {n: len(t) for n, t in times.items()} == {"a": 4, "b": 4, "c": 4}
    two = FakeClock()
    interleaved({"ours": two.side("ours", [1] * 9), "bare": two.side("bare", [1] * 9)}, 4, warmup=0, clock=two)
    assert two.calls == ["ours", "bare", "bare", "ours", "ours", "bare", "bare", "ours"]


def test_times_are_per_call_and_paired_ratio_follows_the_repeats():
    clock = FakeClock()
    ours = clock.side("ours", [2.0, 2.2, 4.0, 2.0, 2.0])
    bare = clock.side("bare", [1.0, 2.0, 4.4, 1.0, 1.6])
    times = interleaved({"ours": ours, "bare": bare}, repeats=5, warmup=0, clock=clock)
    assert times["ours"] == pytest.approx([2.0, 2.2, 4.0, 2.0, 2.0])
    assert times["bare"] == pytest.approx([1.0, 2.0, 4.4, 1.0, 1.6])
    ratios = speed_ratios(times["ours"], times["bare"])
    assert ratios == pytest.approx([0.5, 2.0 / 2.2, 1.1, 0.5, 0.8])
    r = paired_ratio(times["ours"], times["bare"])
    # paired median 0.8, not the 0.5 that min(bare) / min(ours) would report
    assert r == {"median": 0.8, "min": 0.5, "max": 1.1, "iqr": 0.409, "se": 0.17, "n": 5}


def test_spread_statistics():
    s = spread([3.0, 1.0, 2.0, 4.0], digits=None)
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 4.0, 4)
    assert s["iqr"] == pytest.approx(3.25 - 1.75)
    assert s["se"] == pytest.approx(1.2533 * 1.5 / 1.349 / 2)
    assert spread([0.97]) == {"median": 0.97, "min": 0.97, "max": 0.97, "iqr": 0.0, "se": 0.0, "n": 1}
    assert spread([1 / 3, 2 / 3])["median"] == 0.5 and spread([1 / 3])["median"] == 0.333
    with pytest.raises(ValueError, match="paired"):
        speed_ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="paired"):
        speed_ratios([], [])


def test_tol_stops_once_the_median_is_known():
    steady = FakeClock()
    sides = {"a": steady.side("a", [1.0] * 50), "b": steady.side("b", [1.0] * 50)}
    times = interleaved(sides, repeats=50, warmup=0, pairs=[("a", "b")], tol=0.01, min_repeats=5, clock=steady)
    assert len(times["a"]) == 5  # identical pairs: se 0 as soon as min_repeats are in

    noisy = FakeClock()  # ratios alternate 0.9 / 1.1: iqr 0.2, se ~ 0.186 / sqrt(n) falls below 0.05 at n = 14
    sides = {"a": noisy.side("a", [1.0] * 50), "b": noisy.side("b", [0.9, 1.1] * 25)}
    times = interleaved(sides, repeats=50, warmup=0, pairs=[("a", "b")], tol=0.05, min_repeats=5, clock=noisy)
    n = len(times["a"])
    assert n == 14 and paired_ratio(times["a"], times["b"], None)["se"] <= 0.05
    assert paired_ratio(times["a"][:-1], times["b"][:-1], None)["se"] > 0.05
    # no tol: runs every repeat
    again = FakeClock()
    sides = {"a": again.side("a", [1.0] * 50), "b": again.side("b", [0.9, 1.1] * 25)}
    assert len(interleaved(sides, repeats=20, warmup=0, pairs=[("a", "b")], clock=again)["a"]) == 20


def test_budget_and_repeat_caps():
    clock = FakeClock()
    sides = {"a": clock.side("a", [1.0] * 50), "b": clock.side("b", [2.0] * 50)}
    times = interleaved(sides, repeats=50, warmup=0, budget_s=10.0, min_repeats=2, clock=clock)
    assert len(times["a"]) == 4  # 3 s a round: the 4th round passes 10 s
    slow = FakeClock()
    sides = {"a": slow.side("a", [100.0] * 9), "b": slow.side("b", [100.0] * 9)}
    assert len(interleaved(sides, 9, warmup=0, budget_s=1.0, min_repeats=3, clock=slow)["a"]) == 3
    # min_repeats above repeats: repeats wins
    few = FakeClock()
    sides = {"a": few.side("a", [1.0] * 9), "b": few.side("b", [1.0] * 9)}
    assert len(interleaved(sides, 2, warmup=0, budget_s=0.0, min_repeats=5, clock=few)["a"]) == 2


def test_bad_arguments():
    with pytest.raises(KeyError, match="unknown sides"):
        interleaved({"a": lambda: None}, 1, pairs=[("a", "nope")])
    with pytest.raises(ValueError, match="at least one"):
        interleaved({"a": lambda: None}, 0)
    with pytest.raises(ValueError, match="at least one"):
        interleaved({}, 1)
