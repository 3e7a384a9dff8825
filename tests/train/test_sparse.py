"""Embedding tables with sparse gradients (kiln.train.sparse): which tables, one step, the
scheduler, checkpoints and clipping. Pure PyTorch; the DDP run is in test_recommend."""

import copy

import pytest
import torch
from torch import nn

from kiln.spec import OptimizerSpec
from kiln.train.sparse import (
    SPARSE_FROM_ROWS,
    WithSparseTables,
    clip_gradients,
    mark_sparse_tables,
    with_sparse_tables,
)

CPU = torch.device("cpu")


class Tables(nn.Module):
    def __init__(self, rows: int = 1000):
        super().__init__()
        torch.manual_seed(0)
        self.items = nn.Embedding(rows, 4, padding_idx=0)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.items(x)).pow(2).mean()


def test_auto_marks_large_tables_on_cpus_with_adam_only():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.large = nn.Embedding(SPARSE_FROM_ROWS, 2)
            self.small = nn.Embedding(10, 2)
            self.normed = nn.utils.spectral_norm(nn.Embedding(SPARSE_FROM_ROWS, 2))

    def marked(device: torch.device, **setting) -> list[str]:
        model = Two()
        tables = mark_sparse_tables(model, OptimizerSpec(**setting), device)
        flagged = [n for n, m in model.named_children() if m.sparse]
        assert len(tables) == len(flagged)
        return flagged

    assert marked(CPU) == ["large"]  # the spectral norm's weight is computed: dense
    assert marked(CPU, sparse_embeddings=True) == ["large", "small"]
    assert marked(CPU, sparse_embeddings=False) == []
    assert marked(torch.device("cuda")) == []  # NCCL's sparse all-reduce is not relied on
    assert marked(CPU, name="sgd") == []
    with pytest.raises(ValueError, match="adam or adamw"):
        OptimizerSpec(name="sgd", sparse_embeddings=True)


def sparse_model_and_optimizer(weight_decay: float = 0.1):
    model = Tables()
    tables = mark_sparse_tables(model, OptimizerSpec(sparse_embeddings=True), CPU)
    dense = torch.optim.AdamW(model.head.parameters(), lr=0.1, weight_decay=weight_decay)
    return model, with_sparse_tables(dense, tables, lr=0.1, betas=(0.9, 0.999))


def test_a_step_moves_only_the_rows_a_batch_used_and_the_rest_of_the_model():
    model, optimizer = sparse_model_and_optimizer()
    assert isinstance(optimizer, WithSparseTables)
    dense_model = copy.deepcopy(model)
    dense_model.items.sparse = False
    adam = torch.optim.Adam(dense_model.items.parameters(), lr=0.1)  # no decay: lazy Adam's
    before = model.items.weight.detach().clone()
    used = torch.tensor([3, 5, 5, 7])
    model(used).backward()
    assert model.items.weight.grad.is_sparse
    optimizer.step()
    dense_model(used).backward()
    adam.step()
    moved = (model.items.weight != before).any(dim=1).nonzero().flatten().tolist()
    assert moved == [3, 5, 7]  # unused rows: no update, no weight decay
    torch.testing.assert_close(model.items.weight[used], dense_model.items.weight[used])
    assert not torch.equal(model.head.weight, dense_model.head.weight)  # AdamW stepped it


def test_a_scheduler_sets_both_parts_and_a_checkpoint_restores_both():
    model, optimizer = sparse_model_and_optimizer()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5**epoch)
    for batch in ([1, 2], [2, 3]):
        optimizer.zero_grad(set_to_none=True)
        model(torch.tensor(batch)).backward()
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for p in optimizer.parts for g in p.param_groups] == [0.025, 0.025]
    copy_model, restored = sparse_model_and_optimizer()
    copy_model.load_state_dict(model.state_dict())
    restored_scheduler = torch.optim.lr_scheduler.LambdaLR(restored, lambda epoch: 0.5**epoch)
    restored.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as a checkpoint is read
    restored_scheduler.load_state_dict(scheduler.state_dict())
    for s in (scheduler, restored_scheduler):  # the scheduler still reaches the loaded parts
        s.step()
    assert [g["lr"] for p in restored.parts for g in p.param_groups] == [0.0125, 0.0125]
    for m, o in ((model, optimizer), (copy_model, restored)):
        o.zero_grad(set_to_none=True)
        m(torch.tensor([2, 9])).backward()
        o.step()
    torch.testing.assert_close(copy_model.state_dict(), model.state_dict())


def test_clipping_counts_sparse_gradients_as_their_dense_equivalent():
    sparse, _ = sparse_model_and_optimizer()
    dense = copy.deepcopy(sparse)
    dense.items.sparse = False
    batch = torch.tensor([4, 4, 8, 1])
    for model in (sparse, dense):
        (model(batch) * 100).backward()
    norm = clip_gradients(list(sparse.parameters()), 1.0)
    expected = torch.nn.utils.clip_grad_norm_(dense.parameters(), 1.0)
    torch.testing.assert_close(norm, expected)
    assert norm > 1  # so clipping scaled them
    torch.testing.assert_close(sparse.items.weight.grad.to_dense(), dense.items.weight.grad)
    torch.testing.assert_close(sparse.head.weight.grad, dense.head.weight.grad)
