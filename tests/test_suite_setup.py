"""How the suite itself runs: ``make test``'s ``-n auto --dist loadgroup`` must keep an ``xdist_group`` on one worker."""
from __future__ import annotations

import pytest


@pytest.mark.xdist_group("suite-setup")
def test_loadgroup_keeps_a_group_on_one_worker(request):
    """Tests of one group share a launch made once per worker (``distributed_helpers.grouped``). With pytest 9.2,
    pytest-xdist 3.8's loadgroup stops grouping without a word (pytest-xdist#1386) and every shared launch was
    made twice; pyproject pins pytest < 9.2, and this fails if grouping is lost again."""
    if not request.config.getoption("loadgroup", default=False):
        pytest.skip("not under --dist loadgroup (make test runs it so)")
    assert request.node.nodeid.endswith("@suite-setup"), (
        f"{request.node.nodeid}: --dist loadgroup ignores xdist_group with this pytest/pytest-xdist pair "
        "(pytest-xdist#1386); pin pytest < 9.2")
