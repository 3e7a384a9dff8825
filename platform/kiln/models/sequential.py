"""A sequential recommender in the manner of SASRec (Kang and McAuley, 2018): self-attention
over the user's recent items in order, with learned positions; the output at the most recent
item is the user's vector, scored against the same item embeddings by cosine.

Input x: (B, 1 + N) int64, as the two-tower's: the user index (unused: the order of the history
carries what the model knows about a user, so unknown users and fresh events need no
retraining), then the N most recent item indices, oldest first, left-padded with 0. Every
position of every history is a training target, as the interactions dataset makes one example
per step of each user's history (kiln.data.interactions); the training loop, the evaluation and
the serving path are the two-tower's (it has the same `user_vectors` and `item_vectors`).
"""

import torch
import torch.nn.functional as F
from torch import nn


class SequentialRecommender(nn.Module):
    def __init__(
        self,
        num_items: int,
        history_len: int,
        dim: int,
        layers: int,
        heads: int,
        dropout: float,
        temperature: float,
        loss: str,
        negatives: str,
        num_negatives: int,
    ):
        super().__init__()
        self.num_items, self.temperature = num_items, temperature
        self.loss, self.negatives, self.num_negatives = loss, negatives, num_negatives
        self.item_embedding = nn.Embedding(num_items, dim, padding_idx=0)
        nn.init.normal_(self.item_embedding.weight, std=dim**-0.5)  # unit-length rows, roughly
        self.position = nn.Parameter(torch.randn(history_len, dim) * dim**-0.5)
        block = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def user_vectors(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1 + N) -> (B, D), unit length
        history = x[:, 1:]  # (B, N), left-padded: the last column is the latest item
        padding = history == 0
        padding[:, -1] = False  # a user with no history still gets a vector (from positions)
        h = self.dropout(self.item_embedding(history) + self.position)  # (B, N, D)
        out = self.encoder(h, src_key_padding_mask=padding)  # (B, N, D)
        return F.normalize(self.norm(out[:, -1]), dim=-1)

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:  # (..., D)
        if items is None:
            items = torch.arange(self.num_items, device=self.item_embedding.weight.device)
        return F.normalize(self.item_embedding(items), dim=-1)

    def forward(
        self, x: torch.Tensor, items: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """A score per catalogue item (B, num_items); with `items`, the user vectors and those
        items' vectors (training: one forward through both, for DDP)."""
        if items is None:
            return self.user_vectors(x) @ self.item_vectors().T
        return self.user_vectors(x), self.item_vectors(items)
