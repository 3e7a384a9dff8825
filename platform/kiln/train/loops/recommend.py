"""Recommender training under Ray Train (the two-tower and the sequential family, which share
`user_vectors` and `item_vectors`): sampled softmax or BPR, with in-batch or sampled negatives,
and ranking metrics (HR@10, NDCG@10, Recall@20) every epoch.

Each training example is (user, recent items) -> next item, from memory or streamed
(kiln.train.feed); validation rows are held in memory either way. One DDP forward computes the
user vectors and the candidate item vectors together, so both towers' gradients are
synchronised.
"""

from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from kiln import models
from kiln.data import Dataset
from kiln.metrics.ranking import catalogue_hits, ranking_metrics, recall_rows, sampled_sums
from kiln.models.two_tower import TwoTower
from kiln.train.feed import feed_for
from kiln.train.loops.supervised import rows_accounted
from kiln.train.session import WorkerSession, unwrap


def train_loop_per_worker(config: dict[str, Any]) -> None:
    session = WorkerSession(config)
    spec, data = session.spec, session.data
    model = cast(TwoTower, session.prepare(models.create(spec.model, data.schema)))
    towers = session.wrap(model)
    optimizer = session.optimizer(model)
    feed = feed_for(session, spec.train.batch_size)
    log_q = sampling_log_probability(data.extras["popularity"], session.device)
    for epoch in session.epochs():
        model.train()
        total, count = 0.0, 0.0
        for x, positives in feed.epoch(epoch):
            with session.autocast():
                loss = batch_loss(towers, model, x, positives, log_q)
            session.step(loss, towers, optimizer)
            total += loss.item() * len(x)
            count += len(x)
        total, count = session.all_sum([total, count])
        metrics = {
            "train_loss": total / max(count, 1),
            **rows_accounted(data, count),
            **feed.wait.metrics(session),
            **validate(session, model),
        }
        if session.end_epoch(metrics):
            break


def sampling_log_probability(popularity: np.ndarray, device: torch.device) -> torch.Tensor:
    """log q(item): how likely an item is to appear as an in-batch negative (its share of
    training interactions). Subtracting it from the logits (the logQ correction of Yi et al.,
    2019) stops in-batch softmax from learning to push popular items down."""
    share = popularity / popularity.sum()
    return torch.as_tensor(np.log(np.maximum(share, 1e-12)), dtype=torch.float32, device=device)


def batch_loss(
    towers, model: TwoTower, x: torch.Tensor, positives: torch.Tensor, log_q: torch.Tensor
) -> torch.Tensor:
    if model.negatives == "in_batch":
        users, items = towers(x, positives)  # every other positive in the batch is a negative
        scores = users @ items.T / model.temperature - log_q[positives][None, :]  # (B, B)
        same_item = positives[:, None] == positives[None, :]
        scores = scores.masked_fill(
            same_item & ~torch.eye(len(x), dtype=torch.bool, device=x.device), -1e9
        )
        positive_scores, negative_scores = scores.diagonal()[:, None], scores
    else:
        sampled = torch.randint(1, model.num_items, (model.num_negatives,), device=x.device)
        users, items = towers(x, torch.cat([positives, sampled]))
        positive_scores = (users * items[: len(x)]).sum(-1, keepdim=True) / model.temperature
        negative_scores = users @ items[len(x) :].T / model.temperature  # (B, K)
        negative_scores = negative_scores.masked_fill(positives[:, None] == sampled[None, :], -1e9)
    if model.loss == "bpr":  # one negative per example: the hardest of the candidates
        if model.negatives == "in_batch":
            negative_scores = negative_scores.masked_fill(
                torch.eye(len(x), dtype=torch.bool, device=x.device), -1e9
            )
        return -F.logsigmoid(positive_scores[:, 0] - negative_scores.max(dim=1).values).mean()
    if model.negatives == "in_batch":  # the diagonal is the positive
        return F.cross_entropy(negative_scores, torch.arange(len(x), device=x.device))
    logits = torch.cat([positive_scores, negative_scores], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(x), dtype=torch.long, device=x.device))


@torch.no_grad()
def validate(session: WorkerSession, model: TwoTower, chunk: int = 4096) -> dict[str, float]:
    """Each rank ranks every world-th validation user (a chunk of users at a time), and its
    share of the users Recall@20 is measured on; the sums are added across ranks."""
    data, device = session.data, session.device
    x_val, y_val = held_out(data)
    model = cast(TwoTower, unwrap(model)).eval()
    all_items = model.item_vectors()  # (num_items, D)
    mine = np.arange(session.rank, len(y_val), session.world)
    hits = np.zeros(2)
    for start in range(0, len(mine), chunk):
        rows = mine[start : start + chunk]
        users = model.user_vectors(torch.as_tensor(x_val[rows], device=device))
        candidates = torch.as_tensor(data.extras["candidates"][rows], device=device)
        scores = (users[:, None, :] * all_items[candidates]).sum(-1)  # (U, 101)
        hits += sampled_sums(scores.float().cpu().numpy(), data.extras["candidates"][rows])
    sample = recall_rows(len(y_val))
    sample = sample[sample % session.world == session.rank]

    def scores_of(rows: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(x_val[sample[rows]], device=device)
        return (model.user_vectors(x) @ all_items.T).float().cpu().numpy()

    seen = [data.extras["seen"][i] for i in sample]
    recall = catalogue_hits(scores_of, y_val[sample], seen, len(all_items))
    sums = session.all_sum([hits[0], hits[1], recall, float(len(mine)), float(len(sample))])
    return ranking_metrics(sums)


def held_out(data: Any) -> tuple[np.ndarray, np.ndarray]:
    """The validation examples and items: a Dataset's, or a streamed one's (in its extras)."""
    if isinstance(data, Dataset):
        return data.x_val, data.y_val
    return data.extras["x_val"], data.extras["y_val"]
