"""netem's delay distributions with correlation, reordering with a gap, and the named
links (`ustack.link.presets`), measured off the fault injector's own schedule: over many
packets the delays have the mean, deviation and lag-one correlation asked for; with a gap
G one packet in G is overtaken; each preset carries a TCP transfer intact; a preset
beside the options it sets is refused."""

from __future__ import annotations

import math
import statistics

import pytest

from tests.unit.simlink import Pair, transfer
from ustack import cli
from ustack.link import FaultInjector, Pipeline, Shaper
from ustack.link.faults import jitter_quantile
from ustack.link.presets import PRESETS, preset
from ustack.link.stage import RX
from ustack.testing import _options

N = 20_000


def delays(injector: FaultInjector) -> list[float]:
    """Each of N packets' delay in ms: sent one per ms, released when poll says."""
    sent = {}
    for i in range(N):
        packet = i.to_bytes(4, "big")
        sent[packet] = i / 1000
        assert injector.rx(packet, i / 1000) == []
    released = {}
    while (at := injector.next_deadline()) is not None:
        for packet in injector.poll(at)[RX]:
            released[packet] = at
    return [(released[p] - sent[p]) * 1000 for p in sorted(sent)]


def lag_one(xs: list[float], ranked: bool = False) -> float:
    """The correlation of each value with the next (of their ranks: Spearman's)."""
    if ranked:
        rank = {i: r for r, i in enumerate(sorted(range(len(xs)), key=xs.__getitem__))}
        xs = [float(rank[i]) for i in range(len(xs))]
    return statistics.correlation(xs[:-1], xs[1:])


@pytest.mark.parametrize("distribution", ["normal", "pareto", "paretonormal"])
@pytest.mark.parametrize("correlation", [0.0, 0.5])
def test_delays_have_the_distribution_and_correlation_asked_for(distribution: str,
                                                                correlation: float) -> None:
    got = delays(FaultInjector(delay_ms=100, jitter_ms=10, distribution=distribution,
                               correlation=correlation, seed=7))
    assert statistics.fmean(got) == pytest.approx(100, abs=0.5)
    # A Pareto of shape 3 has no fourth moment: its sample deviation converges slowly.
    tolerance = 0.05 if distribution == "normal" else 0.2
    assert statistics.stdev(got) == pytest.approx(10, rel=tolerance)
    # A Gaussian copula: the ranks correlate as a normal series with rho does, whatever
    # the distribution ((6 / pi) asin(rho / 2), 0.48 for 0.5); the normal's values by rho.
    ranked = 6 / math.pi * math.asin(correlation / 2)
    assert lag_one(got, ranked=True) == pytest.approx(ranked, abs=0.03)
    if distribution == "normal":
        assert lag_one(got) == pytest.approx(correlation, abs=0.03)
    if distribution != "normal":  # a tail of late packets: the median below the mean
        assert statistics.median(got) < 99.5


def test_uniform_jitter_stays_inside_its_bounds_and_netems_tables_shapes() -> None:
    got = delays(FaultInjector(delay_ms=20, jitter_ms=5, seed=3))
    assert 15 <= min(got) < 15.1 and 24.9 < max(got) <= 25
    assert jitter_quantile("uniform", 0.5) == 0.0
    assert jitter_quantile("normal", 0.8413) == pytest.approx(1.0, abs=1e-3)
    assert jitter_quantile("pareto", 0.0) == pytest.approx((1 - 1.5) / 0.75 ** 0.5)


def test_with_a_gap_one_packet_in_g_is_overtaken() -> None:
    injector = FaultInjector(reorder=1.0, reorder_gap=5, seed=1)
    order = []
    for i in range(20):
        order += [int.from_bytes(p, "big") for p in injector.rx(i.to_bytes(4, "big"),
                                                                  i / 1000)]
    assert order == [1, 0, 2, 3, 4, 6, 5, 7, 8, 9, 11, 10, 12, 13, 14, 16, 15, 17, 18, 19]
    assert injector.counters["fault_reordered"] == 4
    assert "gap=5" in injector.describe()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_carries_a_transfer_intact(name: str) -> None:
    chosen = preset(name)
    link = Pipeline([Shaper(**chosen.shape, seed=2), FaultInjector(**chosen.faults, seed=2)])
    data = bytes(range(256)) * 800  # 200 kB
    pair = Pair(seed=2, stage=link)
    got_down, got_up, _, _ = transfer(pair, data, data, limit=600.0)
    assert got_up == data and got_down == data


def test_a_preset_is_refused_beside_what_it_sets(capsys) -> None:
    assert cli.main(["serve", "--preset", "wifi", "--loss", "1%", "--delay", "5"]) == 2
    assert "--preset wifi sets the link's faults and shaping; drop --loss, --delay" in (
        capsys.readouterr().err)
    with pytest.raises(ValueError, match="no link preset 'lte': one of wifi, 3g, satellite"):
        preset("lte")
    mark = pytest.mark.ustack(preset="3g", jitter_ms=3).mark
    with pytest.raises(pytest.UsageError, match="drop jitter_ms or the preset"):
        _options(mark)
    assert _options(pytest.mark.ustack(preset="3g", seed=4).mark).preset == "3g"


def test_full_correlation_is_one_random_jitter_and_settings_that_do_nothing_are_refused(
        capsys) -> None:
    got = delays(FaultInjector(delay_ms=50, jitter_ms=10, distribution="normal",
                               correlation=1.0, seed=9))
    # One draw, not the median (float sums of send and release times differ by an ulp).
    assert max(got) - min(got) < 1e-6 and abs(got[-1] - 50) > 1e-3
    with pytest.raises(ValueError, match="a reorder gap needs a reordering probability"):
        FaultInjector(reorder_gap=3)
    with pytest.raises(ValueError, match="needs a jitter"):
        FaultInjector(delay_ms=5, distribution="pareto")
    assert cli.main(["serve", "--reorder-gap", "3"]) == 2
    assert "a reorder gap needs a reordering probability" in capsys.readouterr().err
    with pytest.raises(pytest.UsageError, match="needs a jitter"):
        _options(pytest.mark.ustack(correlation=0.5).mark)
