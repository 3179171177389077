"""Vocabulary tables trained by rows (taskzoo.sparse_rows): AdamW's numbers, in and out of the trainer."""

from __future__ import annotations

import copy
import json

import pytest
import toy_plugin
import torch
from toy_plugin import ToyModel, ToyPlugin, toy_points

from taskzoo.cli import cli
from taskzoo.cpu_kernels import clip_grad_norm_
from taskzoo.sparse_rows import VOCABULARY_ROWS, RowSparseAdamW, sparse_gradients, vocabulary_embeddings

TABLE = (40, 3)


def _gradients(steps: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each step's rows (some repeated, as a batch repeats tokens) and their values."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        rows = torch.randint(0, TABLE[0] // 2, (6,), generator=generator)  # half the table is never reached
        batches.append((rows, torch.randn(6, TABLE[1], generator=generator)))
    return batches


def _dense(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.zeros(TABLE).index_add_(0, rows, values)


def _sparse(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.sparse_coo_tensor(rows[None], values, TABLE, check_invariants=True)


def _step(optimizer: torch.optim.Optimizer, parameter: torch.Tensor, gradient: torch.Tensor, lr: float) -> None:
    optimizer.param_groups[0]["lr"] = lr  # as a schedule changes it
    parameter.grad = gradient
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_rows_training_is_fused_adamw_bit_for_bit_through_a_reload():
    start = torch.randn(TABLE, generator=torch.Generator().manual_seed(1))
    dense, rows = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    options = {"lr": 0.01, "weight_decay": 0.1, "fused": True}
    reference, optimizer = torch.optim.AdamW([dense], **options), RowSparseAdamW([rows], **options)
    for step, (indices, values) in enumerate(_gradients(8)):
        lr = 0.01 * (step + 1)
        _step(reference, dense, _dense(indices, values), lr)
        _step(optimizer, rows, _sparse(indices, values), lr)
        assert torch.equal(dense, rows), step
        if step == 3:  # a resume: the state as AdamW keeps it, loaded into a fresh optimizer
            saved = optimizer.state_dict()
            assert set(saved["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
            assert saved["state"][0]["exp_avg"].shape == TABLE
            for key, value in reference.state_dict()["state"][0].items():
                assert torch.equal(saved["state"][0][key], value), key
            optimizer = RowSparseAdamW([rows], **options)
            optimizer.load_state_dict(copy.deepcopy(saved))


def test_the_rows_never_reached_only_decay():
    start = torch.randn(TABLE, generator=torch.Generator().manual_seed(2))
    table = torch.nn.Parameter(start.clone())
    optimizer = RowSparseAdamW([table], lr=0.05, weight_decay=0.2, fused=True)
    expected = start.clone()
    for indices, values in _gradients(5):
        _step(optimizer, table, _sparse(indices, values), 0.05)
        expected.mul_(1 - 0.05 * 0.2)
    reached = torch.zeros(TABLE[0], dtype=torch.bool)
    reached[torch.cat([indices for indices, _ in _gradients(5)])] = True
    assert torch.equal(table[~reached], expected[~reached])
    assert not torch.allclose(table[reached], expected[reached])


def test_an_adamw_checkpoint_loads_into_rows_training_and_back():
    """A run checkpointed with dense gradients (a GPU) resumes by rows, and the other way round."""
    start = torch.randn(TABLE, generator=torch.Generator().manual_seed(3))
    dense, rows = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    reference = torch.optim.AdamW([dense], lr=0.02, weight_decay=0.01, fused=True)
    batches = _gradients(9, seed=4)
    for indices, values in batches[:3]:
        _step(reference, dense, _dense(indices, values), 0.02)
    rows.data.copy_(dense)
    optimizer = RowSparseAdamW([rows], lr=0.02, weight_decay=0.01, fused=True)
    optimizer.load_state_dict(copy.deepcopy(reference.state_dict()))  # as from a file: its own tensors
    for indices, values in batches[3:6]:
        _step(reference, dense, _dense(indices, values), 0.02)
        _step(optimizer, rows, _sparse(indices, values), 0.02)
    assert torch.equal(dense, rows)
    back = torch.optim.AdamW([rows], lr=0.02, weight_decay=0.01, fused=True)
    back.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for indices, values in batches[6:]:
        _step(reference, dense, _dense(indices, values), 0.02)
        _step(back, rows, _dense(indices, values), 0.02)
    assert torch.equal(dense, rows)


@pytest.mark.parametrize("options", [{"foreach": True}, {"fused": True, "amsgrad": True}])
def test_without_the_row_path_sparse_gradients_step_as_dense_ones(options):
    start = torch.randn(TABLE, generator=torch.Generator().manual_seed(5))
    dense, rows = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    reference = torch.optim.AdamW([dense], lr=0.01, weight_decay=0.1, **options)
    optimizer = RowSparseAdamW([rows], lr=0.01, weight_decay=0.1, **options)
    for indices, values in _gradients(4):
        _step(reference, dense, _dense(indices, values), 0.01)
        _step(optimizer, rows, _sparse(indices, values), 0.01)
    assert torch.equal(dense, rows)


def test_a_table_that_takes_a_dense_gradient_continues_with_adamws_own_step():
    start = torch.randn(TABLE, generator=torch.Generator().manual_seed(6))
    dense, rows = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    reference = torch.optim.AdamW([dense], lr=0.01, weight_decay=0.1, fused=True)
    optimizer = RowSparseAdamW([rows], lr=0.01, weight_decay=0.1, fused=True)
    for step, (indices, values) in enumerate(_gradients(6, seed=7)):
        gradient = _dense(indices, values)
        _step(reference, dense, gradient, 0.01)
        _step(optimizer, rows, gradient if step % 2 else _sparse(indices, values), 0.01)
    assert torch.equal(dense, rows)


def test_clipping_a_sparse_gradient_is_clipping_its_dense_equal():
    generator = torch.Generator().manual_seed(8)
    table, layer = torch.nn.Parameter(torch.zeros(TABLE)), torch.nn.Parameter(torch.zeros(5, 4))
    dense_table, dense_layer = torch.nn.Parameter(torch.zeros(TABLE)), torch.nn.Parameter(torch.zeros(5, 4))
    indices = torch.tensor([3, 9, 3, 30])  # row 3 twice: its values add up before the norm
    values = torch.randn(4, TABLE[1], generator=generator)
    layer.grad = torch.randn(5, 4, generator=generator)
    table.grad, dense_table.grad, dense_layer.grad = _sparse(indices, values), _dense(indices, values), layer.grad.clone()
    norm = clip_grad_norm_([table, layer], 0.5)
    expected = torch.nn.utils.clip_grad_norm_([dense_table, dense_layer], 0.5)
    assert float(norm) == pytest.approx(float(expected), rel=1e-6) and float(norm) > 0.5
    assert table.grad.is_sparse and table.grad.is_coalesced()
    torch.testing.assert_close(table.grad.to_dense(), dense_table.grad)
    torch.testing.assert_close(layer.grad, dense_layer.grad)


def test_only_untied_trainable_vocabularies_train_by_rows():
    class Network(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.words = torch.nn.Embedding(VOCABULARY_ROWS, 4)
            self.positions = torch.nn.Embedding(512, 4)  # every batch reaches most of it
            self.frozen = torch.nn.Embedding(VOCABULARY_ROWS, 4).requires_grad_(False)
            self.tied = torch.nn.Embedding(VOCABULARY_ROWS, 4)
            self.head = torch.nn.Linear(4, VOCABULARY_ROWS, bias=False)
            self.head.weight = self.tied.weight  # a language model's output layer: dense gradients

    network = Network()
    assert vocabulary_embeddings(network) == [network.words]
    network.words.sparse = True  # the user's own choice comes back after training
    with pytest.raises(RuntimeError), sparse_gradients([network.words, network.positions]):
        assert network.words.sparse and network.positions.sparse
        raise RuntimeError("training failed")
    assert network.words.sparse and not network.positions.sparse


# -- in the shared trainer ------------------------------------------------------------------------


class TableToy(ToyModel):
    """The toy task's points, each shifted by a row of a vocabulary-sized table."""

    def __init__(self, classes: int) -> None:
        super().__init__(classes)
        self.table = torch.nn.Embedding(VOCABULARY_ROWS + 11, 2)

    def forward(self, batch):
        shifted = dict(batch, x=batch["x"] + self.table(batch["index"] * 37 % self.table.num_embeddings))
        return super().forward(shifted)


@pytest.fixture
def table_toy(use_host, tmp_path, monkeypatch):
    monkeypatch.setattr(toy_plugin, "ToyModel", TableToy)  # build_model and load both make it
    use_host(entry_points=[], plugins=[("toy", ToyPlugin())], registry_path=None)
    return toy_points(tmp_path / "points.csv")


def _train(runner, data, out, *more):
    result = runner.invoke(cli, ["run", "toy", "--data", str(data), "--output", str(out), "--device", "cpu",
                                 "--lr", "0.05", "--max-grad-norm", "0.5", "--keep-checkpoint", *map(str, more)])
    assert result.exit_code == 0, result.output
    from safetensors.torch import load_file

    return load_file(str(out / "checkpoint" / "model.safetensors"))


def test_the_trainer_trains_a_vocabulary_by_rows_to_the_dense_weights(runner, table_toy, tmp_path, monkeypatch):
    from taskzoo import trainer

    row_steps = []
    update_rows = RowSparseAdamW._update_rows
    monkeypatch.setattr(RowSparseAdamW, "_update_rows",
                        lambda self, parameter, *rest: row_steps.append(parameter.shape) or update_rows(self, parameter, *rest))
    by_rows = _train(runner, table_toy, tmp_path / "rows", "--epochs", 2)
    steps = json.loads((tmp_path / "rows" / "checkpoint" / "trainer_state.json").read_text())["global_step"]
    assert row_steps == [torch.Size([VOCABULARY_ROWS + 11, 2])] * steps

    monkeypatch.setattr(trainer, "vocabulary_embeddings", lambda model: [])
    dense = _train(runner, table_toy, tmp_path / "dense", "--epochs", 2)
    assert len(row_steps) == steps  # no row steps in the dense run
    for name in dense:  # the same up to the order in which the clipping norm adds its squares
        torch.testing.assert_close(by_rows[name], dense[name], rtol=1e-5, atol=1e-7)
    saved = torch.load(tmp_path / "rows" / "checkpoint" / "optimizer.pt", weights_only=True)["state"]
    table_moments = [state for state in saved.values() if state["exp_avg"].shape == (VOCABULARY_ROWS + 11, 2)]
    assert len(table_moments) == 1 and 0 < int(table_moments[0]["exp_avg_sq"].ne(0).any(dim=1).sum()) < 200


def test_a_run_trained_by_rows_resumes_exactly(runner, table_toy, tmp_path, monkeypatch):
    from taskzoo import trainer as trainer_module

    straight = _train(runner, table_toy, tmp_path / "straight", "--epochs", 3)
    original = trainer_module.Trainer._end_epoch

    def stop_after_one(self, epoch, *args):
        original(self, epoch, *args)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "_end_epoch", stop_after_one)
    runner.invoke(cli, ["run", "toy", "--data", str(table_toy), "--output", str(tmp_path / "split"), "--device", "cpu",
                        "--lr", "0.05", "--max-grad-norm", "0.5", "--keep-checkpoint", "--epochs", "3"])
    monkeypatch.setattr(trainer_module.Trainer, "_end_epoch", original)
    resumed = runner.invoke(cli, ["run", "toy", "--resume", str(tmp_path / "split")])
    assert resumed.exit_code == 0, resumed.output
    from safetensors.torch import load_file

    split = load_file(str(tmp_path / "split" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(straight[name], split[name]) for name in straight)
