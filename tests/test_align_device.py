"""The alignment cost model (the one routing rule) and the device packing's layout (numpy
stands in for cupy: the same array API; the kernels run only on a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from biovl_core.align import pack_flat
from biovl_core.align.backends import AUTO_CUPY_MIN_CELLS
from biovl_core.align.cost import RATES_ENV, AlignCost, cost_model
from biovl_core.align.device_solve import LABEL_DTYPE, pack_on_device
from biovl_core.bench.align import make_problems


def test_device_packing_has_pack_flats_layout() -> None:
    probs = make_problems(40, seed=3)
    got = pack_on_device(np, [p.match for p in probs], [p.drop for p in probs])
    for a, b in zip(got, pack_flat(probs), strict=True):
        np.testing.assert_array_equal(a, b)
    assert got[0].dtype == np.float32 and got[1].dtype == np.int64
    assert np.iinfo(LABEL_DTYPE).max >= max(p.match.shape[0] for p in probs)


def test_routing_follows_the_cost_of_each_path() -> None:
    cost = AlignCost()
    assert cost.route(10**9, gpu=False) == "numba"
    host = cost.crossover_cells("cupy")
    assert host == AUTO_CUPY_MIN_CELLS == 2_000_000
    assert cost.route(host - 1, gpu=True) == "numba" and cost.route(host, gpu=True) == "cupy"
    resident = cost.crossover_cells("resident")
    assert resident < host  # no copy or host packing: the GPU pays from smaller batches
    assert cost.route(resident, gpu=True, resident=True) == "resident"
    assert cost.route(resident - 1, gpu=True, resident=True) == "numba"
    for cells in (resident, host, 10 * host):  # the chosen path is the cheaper estimate
        for res in (False, True):
            path = cost.route(cells, gpu=True, resident=res)
            other = "numba" if path != "numba" else ("resident" if res else "cupy")
            assert cost.seconds(path, cells) <= cost.seconds(other, cells) * (1 + 1e-9)
    slow = AlignCost(host_cells_per_s=1e9)  # a host path slower than numba never wins
    assert slow.route(10**12, gpu=True) == "numba"


def test_rates_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RATES_ENV, "numba=1e9, host=2e9")
    cost = cost_model()
    assert (cost.numba_cells_per_s, cost.host_cells_per_s) == (1e9, 2e9)
    assert cost.crossover_cells("cupy") == 400_000
    monkeypatch.setenv(RATES_ENV, "gpu=1")
    with pytest.raises(ValueError, match="unknown rate 'gpu'"):
        cost_model()


def test_method_problems_are_array_code_that_stays_numpy_here() -> None:
    """The same prepare builds the problem on the GPU from a cupy similarity; with numpy it is
    the numpy problem (dtype, values) every CPU backend solves."""
    from biovl_core.align import resolve_method
    from biovl_core.device import array_module_of

    assert array_module_of(np.zeros(2)) is np and array_module_of([1.0]) is np
    rng = np.random.default_rng(5)
    sim = rng.normal(size=(6, 40)).astype(np.float32)
    for name in ("biovl", "nw_norm"):
        spec = resolve_method(name)
        steps = [
            f"{v} the tube for {s} s" for v, s in zip("abcdef", range(10, 70, 10), strict=True)
        ]
        params = {**spec.defaults, **({"steps": steps} if name == "biovl" else {})}
        problem = spec.prepare(sim, params)
        assert isinstance(problem.match, np.ndarray) and problem.match.dtype == np.float32
        assert problem.match.shape == (6, 40) and problem.drop.shape == (40,)
        assert np.isfinite(problem.match).all()
