from concurrent.futures import ThreadPoolExecutor

import pytest

from node.claims import NoFreePart, claim_partition


def test_each_node_gets_its_own_part_and_keeps_it(tmp_path):
    peers = [f"peer-{i}" for i in range(5)]
    with ThreadPoolExecutor(5) as pool:  # racing claimers never share a part
        parts = list(pool.map(lambda p: claim_partition(tmp_path, 8, p), peers))
    assert sorted(parts) == [0, 1, 2, 3, 4]
    assert [claim_partition(tmp_path, 8, p) for p in peers] == parts  # a restart finds its claim


def test_running_out_of_parts_is_a_clear_error(tmp_path):
    claim_partition(tmp_path, 1, "a")
    with pytest.raises(NoFreePart, match="all 1 parts"):
        claim_partition(tmp_path, 1, "b")
