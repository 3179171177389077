"""--compile: torch.compile of the model's forward pass in the shared trainer; the same losses as
eager training, the same checkpoints, and a model that cannot compile trains eagerly with one
warning instead of failing the run."""

from __future__ import annotations

import json

import pytest
import torch

from taskzoo.cli import cli
from taskzoo.trainer import compile_with_fallback
from toy_plugin import ToyPlugin, toy_points


@pytest.fixture
def toy(use_host, tmp_path):
    use_host(entry_points=[], plugins=[("toy", ToyPlugin())], registry_path=None)
    return toy_points(tmp_path / "points.csv")


@pytest.mark.slow
def test_compiled_training_has_the_losses_of_eager_training(runner, toy, tmp_path):
    import torch._dynamo.utils

    histories = {}
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for name, flags in (("eager", []), ("compiled", ["--compile"])):
        result = runner.invoke(cli, ["run", "toy", "--data", str(toy), "--epochs", "3", "--device", "cpu",
                                     "--output", str(tmp_path / name), *flags])
        assert result.exit_code == 0, result.output
        assert "could not be compiled" not in result.output
        histories[name] = json.loads((tmp_path / name / "metrics.json").read_text())["history"]
    for eager, compiled in zip(histories["eager"], histories["compiled"]):
        assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4, abs=1e-5)
        assert compiled["val"]["accuracy"] == eager["val"]["accuracy"]
    assert (tmp_path / "compiled" / "model").is_dir()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # it did compile


class _Failed(Exception):
    """What dynamo raises when a backend cannot compile a graph."""


_Failed.__module__ = "torch._dynamo.exc"


@pytest.fixture
def uncompilable_linear(monkeypatch) -> tuple[torch.nn.Linear, list[str]]:
    """A Linear under --compile on a machine whose compiler fails, and the warnings it gave."""
    def cannot_compile(function, **options):
        def compiled(*args, **kwargs):
            raise _Failed("backend='inductor' raised:\nCppCompileError: no C++ compiler")
        return compiled

    monkeypatch.setattr(torch, "compile", cannot_compile)
    model = torch.nn.Linear(3, 2)
    warnings: list[str] = []
    compile_with_fallback(model, warnings.append)
    return model, warnings


def test_a_model_that_cannot_compile_runs_eagerly_with_one_warning(uncompilable_linear):
    model, warnings = uncompilable_linear
    x = torch.ones(4, 3)
    np_eager = torch.nn.functional.linear(x, model.weight, model.bias)
    assert torch.equal(model(x), np_eager) and torch.equal(model(x), np_eager)
    assert len(warnings) == 1 and "Linear could not be compiled (backend='inductor' raised:); training eagerly" in warnings[0]
    assert list(model.state_dict()) == ["weight", "bias"]  # checkpoints keep their names


def test_errors_of_the_model_itself_are_not_taken_for_compiler_failures(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda function, **options: function)

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise ValueError("shape mismatch in the user's model")

    model = Broken()
    compile_with_fallback(model, lambda message: None)
    with pytest.raises(ValueError, match="shape mismatch"):
        model(torch.ones(1))


def test_a_failed_compile_keeps_what_wraps_the_forward_pass(uncompilable_linear):
    """Mixed precision wraps the (compiled) forward pass in autocast after --compile; falling back
    to eager must keep that wrapper, and warn once however often the model is called."""
    model, warnings = uncompilable_linear
    inner = model.forward
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(inner)  # as accelerate's prepare does
    outputs = [model(torch.ones(4, 3)) for _ in range(3)]
    assert all(output.dtype == torch.bfloat16 for output in outputs)  # still under autocast
    assert len(warnings) == 1
