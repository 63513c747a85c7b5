"""One vectorised packing for the flat kernels: same buffers as pack_flat, one allocation, and
the size rule by which backend="auto" keeps small batches on numba."""

from __future__ import annotations

import numpy as np
import pytest

from biovl_core.align import (
    AUTO_CUPY_MIN_CELLS,
    align,
    backends,
    kernel_numba,
    pack_flat,
    pack_padded,
    solve_segmentation,
)
from biovl_core.align.pack import pack_batch
from biovl_core.align.wavefront import solve_padded
from biovl_core.bench.align import make_problems


@pytest.mark.parametrize("threads", [1, 3])
def test_pack_batch_matches_pack_flat(threads: int) -> None:
    problems = make_problems(50, seed=3) + make_problems(5, seed=4, k_range=(1, 2), n_range=(1, 3))
    want = pack_flat(problems)
    packed = pack_batch([p.match for p in problems], [p.drop for p in problems], threads=threads)
    got = packed.flat()
    for name, g, w in zip(
        ("m_flat", "m_off", "drop", "seg_off", "ks", "ns"), got, want, strict=True
    ):
        assert g.dtype == w.dtype, name
        np.testing.assert_array_equal(g, w, err_msg=name)
    np.testing.assert_array_equal(packed.view("ks"), want[4])  # the int32 copies the GPU reads
    np.testing.assert_array_equal(packed.view("ns"), want[5])
    # every section lives in the one buffer, 16-byte aligned, without overlap
    assert all(np.shares_memory(packed.buffer, packed.view(n)) for n in packed.sections)
    spans = sorted((off, off + dt.itemsize * n) for off, dt, n in packed.sections.values())
    assert all(off % 16 == 0 for off, _ in spans)
    assert all(
        a_end <= b_start for (_, a_end), (b_start, _) in zip(spans[:-1], spans[1:], strict=True)
    )
    assert spans[-1][1] <= packed.buffer.nbytes


def test_pack_batch_casts_and_uses_the_given_allocation() -> None:
    sims = [np.arange(6, dtype=np.float64).reshape(2, 3), np.ones((1, 4), dtype=np.float32)]
    drops = [np.full(3, -1.0), np.zeros(4, dtype=np.float32)]
    calls: list[int] = []

    def allocate(nbytes: int) -> np.ndarray:
        calls.append(nbytes)
        return np.full(nbytes + 64, 255, dtype=np.uint8)[:nbytes]

    packed = pack_batch(sims, drops, allocate=allocate)
    assert len(calls) == 1 and packed.buffer.nbytes == calls[0]
    np.testing.assert_array_equal(packed.view("m_flat"), [0, 1, 2, 3, 4, 5, 1, 1, 1, 1])
    np.testing.assert_array_equal(packed.view("drop_flat"), [-1, -1, -1, 0, 0, 0, 0])
    assert packed.view("m_flat").dtype == np.float32
    with pytest.raises(ValueError, match="2 match matrices but 1 drop"):
        pack_batch(sims, drops[:1])


def test_packed_numba_equals_numpy_wavefront() -> None:
    problems = make_problems(30, seed=11)
    labels = solve_segmentation(problems, "numba")
    mt, drop, ks, ns = pack_padded(problems)
    wave, _ = solve_padded(np, mt, drop, ks, ns)
    flat_labels, _ = kernel_numba.solve_flat(
        *pack_batch([p.match for p in problems], [p.drop for p in problems]).flat()
    )
    start = 0
    for b, got in enumerate(labels):
        np.testing.assert_array_equal(got, wave[b, : ns[b]])
        np.testing.assert_array_equal(flat_labels[start : start + ns[b]], got)
        start += ns[b]


def test_auto_keeps_small_batches_on_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a usable GPU, 'auto' sends a batch to cupy only from AUTO_CUPY_MIN_CELLS cells on."""
    monkeypatch.setattr(backends, "cupy_usable", lambda: True)
    assert backends.auto_backend(AUTO_CUPY_MIN_CELLS - 1) == "numba"
    assert backends.auto_backend(AUTO_CUPY_MIN_CELLS) == "cupy"
    small = [np.zeros((5, 100), dtype=np.float32)] * 3
    assert backends.resolve_backend("auto", backends.batch_cells(small)) == "numba"
    assert (
        backends.batch_cells([np.zeros((5, 100)), [[1.0, 2.0]], [1.0], [[1.0], [2.0, 3.0]]]) == 502
    )
    # a small batch through the real API runs (on numba) even though a GPU is "usable"
    a = align(np.eye(3, 12, dtype=np.float32), method="nw", backend="auto")
    assert a.labels.shape == (12,)
    monkeypatch.setattr(backends, "cupy_usable", lambda: False)
    assert backends.auto_backend(10 * AUTO_CUPY_MIN_CELLS) == "numba"
