"""The group's last word on each step (biovl_core.align.step_check): relocate, else veto."""

from __future__ import annotations

import math

import numpy as np

from biovl_core.align.group import GROUP_DEFAULTS
from biovl_core.align.step_check import StepProblem, check_steps, veto_bars

P = {**GROUP_DEFAULTS}
TEMP = 3.0


def _problem(n: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Three steps over ``n`` segments: text scores, drop, skip and exemplar llr (+ background)."""
    match = np.full((3, n), -5.0)
    drop = np.zeros(n)
    skip = np.full(3, -2.0)
    llr = np.full((4, n), -4.0)
    llr[3] = 0.0  # the background look is neutral everywhere
    return match, drop, skip, llr


def test_a_run_in_the_wrong_place_moves_where_the_exemplars_put_it() -> None:
    # The text put step 1 on segments 4-5; the others' step 1 looks like segments 6-7.
    match, drop, skip, llr = _problem()
    match[0, 0:2] = match[2, 8:10] = 5.0
    match[1, 4:6] = 3.0
    llr[0, 0:2] = llr[2, 8:10] = 6.0
    llr[1, 6:8] = 8.0
    labels = np.array([0, 0, -1, -1, 1, 1, -1, -1, 2, 2])
    out, conf = check_steps(labels.copy(), StepProblem(match, drop, skip, None, llr), P, TEMP)
    assert list(out) == [0, 0, -1, -1, -1, -1, 1, 1, 2, 2]
    assert 0.5 < conf[1] <= 1.0
    never = {**P, "relocate_fit": math.inf}  # the veto alone: step 1 is judged not performed
    vetoed, conf = check_steps(
        labels.copy(), StepProblem(match, drop, skip, None, llr), never, TEMP
    )
    assert list(vetoed) == [0, 0, -1, -1, -1, -1, -1, -1, 2, 2] and conf[1] > 0.5


def test_a_skipped_step_its_exemplars_find_is_done() -> None:
    # The decode skipped step 1 (its text is weak); segments 3-5 look like the others' step 1.
    match, drop, skip, llr = _problem()
    match[0, 0:2] = match[2, 8:10] = 5.0
    llr[0, 0:2] = llr[2, 8:10] = 6.0
    llr[1, 3:6] = 7.0
    labels = np.array([0, 0, -1, -1, -1, -1, -1, -1, 2, 2])
    out, conf = check_steps(labels.copy(), StepProblem(match, drop, skip, None, llr), P, TEMP)
    assert list(out) == [0, 0, -1, 1, 1, 1, -1, -1, 2, 2] and set(conf) == {1}


def test_a_look_alike_neighbour_keeps_its_run_and_a_true_skip_stays_a_skip() -> None:
    # Step 1 was skipped; the only place it fits is step 2's run, which fits step 2 as well.
    match, drop, skip, llr = _problem()
    match[0, 0:2] = match[2, 5:9] = 5.0
    llr[0, 0:2] = 6.0
    llr[1, 5:9] = llr[2, 5:9] = 6.0
    labels = np.array([0, 0, -1, -1, -1, 2, 2, 2, 2, -1])
    out, conf = check_steps(labels.copy(), StepProblem(match, drop, skip, None, llr), P, TEMP)
    assert list(out) == list(labels) and conf == {}
    loose = {**P, "relocate_margin": -math.inf}  # without the margin step 1 takes its place
    out, _ = check_steps(labels.copy(), StepProblem(match, drop, skip, None, llr), loose, TEMP)
    assert (out == 1).any()


def test_a_swap_is_vetoed_but_never_relocated() -> None:
    match, drop, skip, llr = _problem()
    match[1, 0:2] = match[0, 2:4] = match[2, 8:10] = 5.0
    llr[1, 0:2] = -6.0  # step 1's run (done first) looks nothing like it
    llr[1, 5:7] = 8.0
    llr[0, 2:4] = llr[2, 8:10] = 6.0
    labels = np.array([1, 1, 0, 0, -1, -1, -1, -1, 2, 2])
    out, conf = check_steps(labels.copy(), StepProblem(match, drop, skip, None, llr), P, TEMP)
    assert list(out) == [-1, -1, 0, 0, -1, -1, -1, -1, 2, 2] and set(conf) == {1}


def test_a_steps_bar_follows_how_well_the_others_fit_their_own_runs() -> None:
    others = np.array([[9.0, 2.0, 1.0], [7.0, 3.0, np.nan], [8.0, 2.0, np.nan]])
    bars = veto_bars(others, P)  # medians 8 and 2, less fit_drop 6, within [-1.5, 0.5]
    assert bars.tolist() == [0.5, -1.5, -1.5]  # step 2: one judge only, the lowest bar
    assert veto_bars(others + 5.0, P).tolist() == [0.5, 0.5, -1.5]
    always = veto_bars(others, {**P, "min_step_fit": 1e9})
    assert (always == 1e9).all()
    never = veto_bars(others, {**P, "min_step_fit": -math.inf, "max_step_fit": -math.inf})
    assert (never == -math.inf).all()
