"""UMAP to 2-d then DBSCAN, and the picks made from its clusters: the largest style clusters,
then the best-scoring image of each semantic cluster ("Gallery of Unseen", stages 2 and 3)."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NOISE = -1  # DBSCAN's label for a point in no cluster


@dataclass(frozen=True)
class ClusterParams:
    """UMAP and DBSCAN settings (the post gives none): umap-learn's n_neighbors, its advice for
    clustering (min_dist 0: clusters pack tight), scikit-learn's min_samples, and an eps that
    holds a UMAP cluster whole (0.5 split each family and duplicate set in tests/test_curate.py)."""

    n_neighbors: int = 15
    min_dist: float = 0.0
    metric: str = "cosine"  # embeddings compare by angle (CLIP's are unit vectors)
    eps: float = 1.0  # in UMAP's 2-d units
    min_samples: int = 5
    seed: int = 0


def project(features: np.ndarray, params: ClusterParams) -> np.ndarray:
    """(N, D) -> (N, 2) with UMAP; fewer than 4 points stay where PCA puts them."""
    n = len(features)
    if n < 4:  # UMAP's spectral layout needs more points than its 2 dimensions + 1
        centred = features - features.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return np.pad(centred @ vt[:2].T, ((0, 0), (0, max(0, 2 - vt.shape[0]))))
    import umap

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(params.n_neighbors, n - 1),
        min_dist=params.min_dist,
        metric=params.metric,
        random_state=params.seed,  # reproducible layout (UMAP then runs on one thread)
        init="spectral" if n > params.n_neighbors else "random",  # tiny sets: no spectral gap
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state" and numba chatter
        return reducer.fit_transform(features)


def cluster(points: np.ndarray, params: ClusterParams) -> np.ndarray:
    """DBSCAN labels (N,): 0, 1, … by decreasing cluster size, NOISE for points in none."""
    from sklearn.cluster import DBSCAN

    labels = DBSCAN(eps=params.eps, min_samples=params.min_samples).fit_predict(points)
    return by_size(labels)


def by_size(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters 0, 1, … from the largest down (ties: first seen first); noise stays."""
    sizes = Counter(int(label) for label in labels if label != NOISE)
    order = sorted(sizes, key=lambda label: -sizes[label])
    rank = {label: i for i, label in enumerate(order)}
    return np.array([rank.get(int(label), NOISE) for label in labels], dtype=int)


def top_clusters(labels: np.ndarray, count: int) -> set[int]:
    """The `count` largest clusters (labels are already ranked by size); noise is never chosen."""
    return {int(label) for label in labels if 0 <= label < count}


def keep_best(labels: np.ndarray, scores: Sequence[float]) -> np.ndarray:
    """(N,) bool: the best-scoring image of each cluster; a noise point is its own cluster."""
    kept = labels == NOISE
    for label in set(labels.tolist()) - {NOISE}:
        members = np.flatnonzero(labels == label)
        kept[members[np.argmax(np.asarray(scores)[members])]] = True
    return kept
