"""Recall@K and NMI of embeddings (--task retrieval), with pytorch-metric-learning's
AccuracyCalculator.

Every test image is a query against all the others (the query itself left out). Recall@K is
the fraction of queries with at least one image of their class among their K nearest
neighbours (cosine similarity, exact: PML's CustomKNN on a torch similarity matrix, so faiss is
not needed); NMI compares the labels with a k-means clustering into as many clusters as
classes (scikit-learn's KMeans, seeded: PML's default k-means would need faiss).
"""

import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN
from sklearn.cluster import KMeans

from utils import RECALL_KS


def kmeans_labels(x: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """k-means cluster of every row of `x` (scikit-learn, 10 seeded restarts)."""
    km = KMeans(n_clusters=num_clusters, n_init=10, random_state=0)
    return torch.from_numpy(km.fit_predict(x.detach().cpu().double().numpy())).to(x.device)


def _recall(k: int):
    def calculate(self, knn_labels, query_labels, **kwargs):
        hits = (knn_labels[:, :k] == query_labels.view(-1, 1)).any(dim=1)
        return float(hits.double().mean())
    return calculate


class RecallCalculator(AccuracyCalculator):
    """AccuracyCalculator with Recall@K for K in RECALL_KS (`recall_at_<K>`) besides NMI."""

    def requires_knn(self):
        return super().requires_knn() + [f"recall_at_{k}" for k in RECALL_KS]


for _k in RECALL_KS:
    setattr(RecallCalculator, f"calculate_recall_at_{_k}", _recall(_k))


def retrieval_metrics(embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """{"NMI": ..., "R@1": ..., ..., "R@32": ...} in percent, over the `embeddings` (one row per
    image) with classes `labels`. K beyond the number of other images is capped."""
    embeddings, labels = embeddings.float().cpu(), labels.cpu()
    k = min(max(RECALL_KS), len(labels) - 1)
    calculator = RecallCalculator(
        include=("NMI",) + tuple(f"recall_at_{k}" for k in RECALL_KS), k=k,
        device=torch.device("cpu"), knn_func=CustomKNN(CosineSimilarity()),
        kmeans_func=kmeans_labels)
    found = calculator.get_accuracy(embeddings, labels)
    result = {"NMI": 100.0 * found["NMI"]}
    result.update({f"R@{k}": 100.0 * found[f"recall_at_{k}"] for k in RECALL_KS})
    return result
