"""The network of --task retrieval: an architecture whose classifier is the embedding layer.

The architecture is built with `embedding_size` outputs, so its last linear layer (the
classifier's place) is the embedding layer, made by the builder with the classifier's split
semantics (`last_layer=True`): every one of its output rows and its bias are fit, and its input
columns follow the fit channels of the feature map, as for a classifier. The fit/reset split,
the re-initialisation and the slim extraction therefore treat it exactly like a classifier.

Why every row is fit: the embedding space (and the proxies in it) then stays the same across
generations and between the dense and the slim network, and the slim network computes the
dense one's embeddings with the reset weights zeroed, all `embedding_size` of them. (Split
rows would make the slim embedding shorter; its distances would equal those of the zeroed dense
embedding only when the reset rows' biases are zero.)

The output is L2-normalised, as in the Proxy-Anchor recipe.
"""
import torch.nn as nn
import torch.nn.functional as F


class EmbeddingNet(nn.Module):
    """`network` (an architecture built with embedding_size outputs), L2-normalised."""

    def __init__(self, network: nn.Module, embedding_size: int):
        super().__init__()
        self.network = network
        self.embedding_size = embedding_size

    def forward(self, x):
        return F.normalize(self.network(x), dim=1)

    def embedding_layer(self) -> nn.Linear:
        """The last linear layer: the embedding layer."""
        linears = [m for m in self.network.modules() if isinstance(m, nn.Linear)]
        return linears[-1]
