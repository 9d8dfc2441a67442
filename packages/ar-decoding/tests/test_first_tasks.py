"""FiRST on a two-task mix (:mod:`ar_decoding.first_tasks`, seeds 0 and 1): the routers'
skip sets differ by task (the most common set of count prompts is not that of copy
prompts), and on every task where they skip, the continuation's NLL under the routers'
sets is below that of each of 20 assignments of random sets of the same size per row
(so below the best random draw, not only their mean). About 30 s of CPU per seed."""

from __future__ import annotations

import pytest

from ar_decoding.first_tasks import TASKS, two_task_study


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_skip_sets_differ_by_task_and_beat_random_sets_of_the_same_size(seed: int) -> None:
    study = two_task_study(seed=seed)
    modal = {t: next(iter(study[t]["skip_sets"])) for t in TASKS}
    assert modal["count"] != modal["copy"]
    skipped = [t for t in TASKS if study[t]["skip_ratio"] > 0]
    assert skipped  # the regulariser made the routers skip somewhere
    for t in skipped:
        assert study[t]["router_nll"] < study[t]["random_nll_min"]
