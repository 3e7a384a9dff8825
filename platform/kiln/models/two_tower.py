"""Two-tower retrieval model (Yi et al., 2019; Covington et al., 2016): a user tower over the
user's id and their most recent items, an item tower over item ids, scored by the cosine of
the two vectors. Because the user tower reads recent history, serving can recompute a user's
vector from fresh events without retraining; ids are dropped at random in training so that
history alone (an unknown user, index 0) still gives a good vector.

Input x: (B, 1 + N) int64, the user index then the N most recent item indices (0 = none).
"""

import torch
import torch.nn.functional as F
from torch import nn


class TwoTower(nn.Module):
    def __init__(
        self,
        num_users: int,
        num_items: int,
        history_len: int,
        dim: int,
        hidden: int,
        pooling: str,
        use_user_id: bool,
        user_id_dropout: float,
        temperature: float,
        loss: str,
        negatives: str,
        num_negatives: int,
    ):
        super().__init__()
        self.num_items, self.temperature = num_items, temperature
        self.loss, self.negatives, self.num_negatives = loss, negatives, num_negatives
        self.user_id_dropout = user_id_dropout
        self.item_embedding = nn.Embedding(num_items, dim, padding_idx=0)
        self.user_embedding = nn.Embedding(num_users, dim) if use_user_id else None
        self.position = nn.Parameter(torch.zeros(history_len, dim))  # recency, for attention
        self.attention = nn.Linear(dim, 1) if pooling == "attention" else None
        user_in = dim * (2 if use_user_id else 1)
        self.user_tower = nn.Sequential(
            nn.Linear(user_in, hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )
        self.item_tower = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def user_vectors(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1 + N) -> (B, D), unit length
        users, history = x[:, 0], x[:, 1:]
        items = self.item_embedding(history)  # (B, N, D)
        present = (history > 0).unsqueeze(-1)  # (B, N, 1)
        if self.attention is not None:
            logits = self.attention(torch.tanh(items + self.position)).masked_fill(~present, -1e9)
            weights = torch.softmax(logits, dim=1) * present  # no history: all zero
        else:
            weights = present / present.sum(dim=1, keepdim=True).clamp(min=1)
        parts = [(weights * items).sum(dim=1)]
        if self.user_embedding is not None:
            if self.training and self.user_id_dropout > 0:
                keep = torch.rand(users.shape, device=users.device) >= self.user_id_dropout
                users = users * keep
            parts.append(self.user_embedding(users))
        return F.normalize(self.user_tower(torch.cat(parts, dim=-1)), dim=-1)

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:  # (..., D)
        if items is None:
            items = torch.arange(self.num_items, device=self.item_embedding.weight.device)
        return F.normalize(self.item_tower(self.item_embedding(items)), dim=-1)

    def forward(
        self, x: torch.Tensor, items: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """A score per catalogue item (B, num_items); with `items`, the user vectors and those
        items' vectors instead (training: one forward through both towers, for DDP)."""
        if items is None:
            return self.user_vectors(x) @ self.item_vectors().T
        return self.user_vectors(x), self.item_vectors(items)
