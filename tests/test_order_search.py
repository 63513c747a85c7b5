"""The group's final decode (biovl_core.align.order_search): swap, repeat and fit checks."""

from __future__ import annotations

import numpy as np

from biovl_core.align.group import GROUP_DEFAULTS
from biovl_core.align.order_search import decode

P = {**GROUP_DEFAULTS}
TEMP = 3.0


def _scores(match: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return match, np.zeros(match.shape[1]), np.zeros(match.shape[0])


def test_a_borrowed_run_that_fits_the_step_badly_is_no_swap() -> None:
    # Step 1 was skipped; the text puts it on segments 0-1, before step 0 (segments 2-3).
    match = np.full((3, 6), -5.0)
    match[0, 2:4] = match[2, 4:6] = 5.0
    match[1, 0:2] = 4.0
    skip = np.full(3, -2.0)
    swapped, placed = decode(_scores(match), skip, P, TEMP)  # no exemplar fit known: a swap
    assert list(swapped) == [1, 1, 0, 0, 2, 2] and set(placed) == {0, 1}
    fit = np.ones((3, 6))
    fit[1, 0:2] = -1.0  # segments 0-1 look unlike the other recordings' step 1
    labels, placed = decode(_scores(match), skip, P, TEMP, fit=fit)
    assert list(labels) == [-1, -1, 0, 0, 2, 2] and placed == {}


def test_a_step_done_again_after_the_next_keeps_its_first_time() -> None:
    # Step 0 on segments 0-1, step 1 on 2-3, step 0 again on 4-7 (longer: it fits better).
    match = np.full((3, 10), -5.0)
    match[0, 0:2] = 6.0
    match[1, 2:4] = 5.0
    match[0, 4:8] = 6.0
    match[2, 8:10] = 5.0
    skip = np.full(3, -2.0)
    no_repeat = {**P, "repeat_gain": float("inf")}
    swapped, placed = decode(_scores(match), skip, no_repeat, TEMP)
    assert list(swapped[2:8]) == [1, 1, 0, 0, 0, 0] and set(placed) == {0, 1}
    labels, placed = decode(_scores(match), skip, P, TEMP)
    assert list(labels) == [0, 0, 1, 1, -1, -1, -1, -1, 2, 2] and placed == {}


def test_another_order_may_not_skip_a_step_protocol_order_does() -> None:
    # Steps 0-3 in order; the text likes step 1 on segment 6 too, where step 3 is. Taking
    # step 3's place (and skipping it) is not a swap of steps 1 and 2.
    match = np.full((4, 8), -5.0)
    match[0, 0:2] = match[1, 2:4] = match[2, 4:6] = 5.0
    match[3, 6:8] = 1.0
    match[1, 6:8] = 12.0
    skip = np.full(4, -2.0)
    labels, placed = decode(_scores(match), skip, P, TEMP)
    assert (labels == 3).any() and placed == {}


def test_a_swap_across_a_skipped_step_is_found_within_reach() -> None:
    # Step 2 (segments 0-1) before step 0 (2-3); step 1 not done; step 3 last (4-5).
    match = np.full((4, 6), -5.0)
    match[2, 0:2] = match[0, 2:4] = match[3, 4:6] = 5.0
    skip = np.full(4, -2.0)
    adjacent = {**P, "swap_reach": 1.0}
    labels, placed = decode(_scores(match), skip, adjacent, TEMP)
    assert not (labels == 2).any() or not (labels == 0).any()  # one of them is lost
    labels, placed = decode(_scores(match), skip, P, TEMP)
    assert list(labels) == [2, 2, 0, 0, 3, 3] and set(placed) == {0, 2}
