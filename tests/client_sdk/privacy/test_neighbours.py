"""kNN against brute force, exact n-hop sets against BFS, and the safetensors cache."""

import pytest
import torch

from client_sdk.privacy import NeighbourCacheError, NeighbourIndex, PrivacyConfigError, cosine_knn, exact_hop_sets


def bfs_exact(knn: torch.Tensor, n: int) -> list[set[int]]:
    """Reference: nodes at shortest-path distance exactly n along out-edges (Python BFS)."""
    out = []
    for s in range(knn.shape[0]):
        dist = {s: 0}
        frontier = [s]
        for depth in range(1, n + 1):
            nxt = []
            for u in frontier:
                for v in knn[u].tolist():
                    if v not in dist:
                        dist[v] = depth
                        nxt.append(v)
            frontier = nxt
        out.append({v for v, dv in dist.items() if dv == n})
    return out


def as_sets(hop: torch.Tensor, lengths: torch.Tensor) -> list[set[int]]:
    return [set(row[:length].tolist()) for row, length in zip(hop, lengths.tolist(), strict=True)]


def test_knn_matches_bruteforce():
    torch.manual_seed(0)
    m = torch.randn(300, 12)
    knn = cosine_knn(m, 5, block_size=64)  # several blocks
    unit = m / m.norm(dim=1, keepdim=True)
    sims = unit @ unit.T
    sims.fill_diagonal_(-2.0)
    ref = sims.argsort(dim=1, descending=True)[:, :5]
    assert knn.dtype == torch.int64 and knn.shape == (300, 5)
    assert torch.equal(knn, ref)
    assert not (knn == torch.arange(300).unsqueeze(1)).any()


@pytest.mark.parametrize("k", [0, 10])
def test_knn_rejects_bad_k(k):
    with pytest.raises(PrivacyConfigError) as info:
        cosine_knn(torch.randn(10, 3), k)
    assert info.value.parameter == "k"


# hand-built directed graph, 2 out-edges per node
HAND = torch.tensor([[1, 2], [3, 0], [4, 1], [5, 6], [6, 2], [7, 0], [7, 3], [0, 1]])


def test_hop_sets_on_hand_built_graph():
    hop2, len2 = exact_hop_sets(HAND, 2)
    hop3, len3 = exact_hop_sets(HAND, 3)
    assert set(hop2[0, : len2[0]].tolist()) == {3, 4}
    assert set(hop3[0, : len3[0]].tolist()) == {5, 6}
    hop4, len4 = exact_hop_sets(HAND, 4)
    assert set(hop4[0, : len4[0]].tolist()) == {7}
    for n in (1, 2, 3, 4):
        hop, lengths = exact_hop_sets(HAND, n)
        assert as_sets(hop, lengths) == bfs_exact(HAND, n)
        assert hop.dtype == torch.int64 and lengths.dtype == torch.int64
        assert ((hop >= 0).sum(dim=1) == lengths).all()


def test_hop_sets_match_bfs_on_random_knn_graph():
    torch.manual_seed(1)
    knn = cosine_knn(torch.randn(200, 6), 4)
    hop, lengths = exact_hop_sets(knn, 3, max_hop_set=10_000)
    assert as_sets(hop, lengths) == bfs_exact(knn, 3)


def test_hop_cap_is_a_deterministic_subset():
    torch.manual_seed(2)
    knn = cosine_knn(torch.randn(200, 6), 4)
    full = as_sets(*exact_hop_sets(knn, 3, max_hop_set=10_000))
    hop, lengths = exact_hop_sets(knn, 3, max_hop_set=5)
    again, _ = exact_hop_sets(knn, 3, max_hop_set=5)
    assert hop.shape[1] == 5 and (lengths <= 5).all()
    assert torch.equal(hop, again)
    for members, ref in zip(as_sets(hop, lengths), full, strict=True):
        assert members <= ref and len(members) == min(5, len(ref))


def test_empty_hop_set_has_length_zero():
    complete = torch.tensor([[1, 2], [0, 2], [0, 1]])
    hop, lengths = exact_hop_sets(complete, 2)
    assert lengths.tolist() == [0, 0, 0]
    assert hop.shape == (3, 0)


def test_hops_must_be_positive():
    with pytest.raises(PrivacyConfigError) as info:
        exact_hop_sets(HAND, 0)
    assert info.value.parameter == "hops"


def test_cache_round_trip(tmp_path):
    torch.manual_seed(3)
    m = torch.randn(120, 8)
    index = NeighbourIndex.build(m, k=4, hops=2, max_hop_set=8, model_id="tiny/model@abc", split_layer=3)
    path = index.save(tmp_path)
    assert path.suffix == ".safetensors" and path.parent == tmp_path
    loaded = NeighbourIndex.load(path)
    assert torch.equal(loaded.knn, index.knn) and torch.equal(loaded.hop, index.hop)
    assert torch.equal(loaded.hop_lengths, index.hop_lengths)
    assert loaded.key == index.key
    with pytest.raises(NeighbourCacheError):
        NeighbourIndex.load(path, expect={"k": 5})


def test_load_or_build_uses_the_cache(tmp_path, monkeypatch):
    m = torch.randn(60, 8)
    first = NeighbourIndex.load_or_build(m, tmp_path, k=3, hops=2, model_id="m", split_layer=1)
    monkeypatch.setattr(NeighbourIndex, "build", classmethod(lambda *a, **k: pytest.fail("rebuilt")))
    second = NeighbourIndex.load_or_build(m, tmp_path, k=3, hops=2, model_id="m", split_layer=1)
    assert torch.equal(first.hop, second.hop)


def test_corrupt_cache_is_rejected_and_rebuilt(tmp_path):
    m = torch.randn(60, 8)
    path = NeighbourIndex.load_or_build(m, tmp_path, k=3, hops=2, model_id="m").save(tmp_path)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(NeighbourCacheError):
        NeighbourIndex.load(path)
    rebuilt = NeighbourIndex.load_or_build(m, tmp_path, k=3, hops=2, model_id="m")
    assert torch.equal(NeighbourIndex.load(path).knn, rebuilt.knn)
