"""The shared trainer and run folders, driven through the CLI with the toy task (fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from toy_plugin import ToyPlugin, toy_points

import taskzoo
from taskzoo import run_folders
from taskzoo.cli import cli
from taskzoo.trainer import lr_lambda


@pytest.fixture
def toy(use_host, tmp_path):
    use_host(entry_points=[], plugins=[("toy", ToyPlugin())], registry_path=None)
    return toy_points(tmp_path / "points.csv")


def run(runner, *args):
    return runner.invoke(cli, ["run", "toy", *map(str, args)])


def epochs_logged(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if json.loads(line)["type"] == "epoch"]


def test_run_leaves_a_complete_run_folder(runner, toy, tmp_path):
    out = tmp_path / "run"
    result = run(runner, "--data", toy, "--output", out, "--epochs", 3, "--log-every", 2)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == f"run folder: {out}"
    assert run_folders.read_status(out)["status"] == "complete"
    for name in ("config.yaml", "metrics.json", "metrics.jsonl", "labels.json", "README.md", "training_curves.png", "model/model.safetensors"):
        assert (out / name).exists(), name
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["epochs_run"] == 3 and len(summary["history"]) == 3
    assert summary["val"]["accuracy"] > 0.9  # separable points
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    assert steps and all(s["samples_per_second"] > 0 for s in steps)
    config = yaml.safe_load((out / "config.yaml").read_text())
    # Task defaults apply (toy: lr 0.1, batch 8) under the flags given.
    assert (config["lr"], config["batch_size"], config["epochs"]) == (0.1, 8, 3)
    assert config["resolved"]["labels"] == ["left", "right"]
    # The toy task keeps Task's default description of its split; the model card repeats it.
    validation = f"a random {config['val_fraction']:.0%} of the training data (seed {config['seed']})"
    assert config["resolved"]["validation"] == validation
    assert f"- validation data: {validation}" in (out / "README.md").read_text()


def test_config_file_then_flags_override(runner, toy, tmp_path):
    config = tmp_path / "my-run.yaml"
    config.write_text(yaml.safe_dump({"data": str(toy), "epochs": 1, "batch-size": 4, "seed": 5, "flavour": "salty"}))
    out = tmp_path / "run"
    result = run(runner, "--config", config, "--epochs", 2, "--output", out)
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["epochs"], saved["batch_size"], saved["seed"], saved["flavour"]) == (2, 4, 5, "salty")
    # The resolved config of a run is itself a valid --config.
    again = run(runner, "--config", out / "config.yaml", "--output", tmp_path / "again")
    assert again.exit_code == 0, again.output


def test_unknown_config_key_is_an_error(runner, toy, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("data: x.csv\nepochz: 3\n")
    result = run(runner, "--config", config)
    assert result.exit_code == 2
    assert f"error: {config}: no option --epochz; did you mean --epochs?" in result.output


def test_early_stopping_and_best_epoch(runner, toy, tmp_path, monkeypatch):
    # A learning rate of zero never improves after the first epoch, so patience 2 stops at epoch 3.
    out = tmp_path / "run"
    result = run(runner, "--data", toy, "--output", out, "--epochs", 10, "--lr", 0, "--patience", 2, "--warmup-ratio", 0)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["epochs_run"] == 3 and summary["stopped_early"] and summary["best_epoch"] == 1


@pytest.mark.parametrize(("precision", "draws_predictions"), [("no", True), ("bf16", True), ("no", False)])
def test_what_the_task_keeps_from_evaluating_comes_from_the_best_model(precision, draws_predictions, runner, toy,
                                                                       tmp_path, monkeypatch):
    """Pictures of predictions (Task.report) are drawn from what the task saw in its last
    evaluation; after the last epoch that must be the best model, the one saved in model/.
    Training in bf16 evaluates in full precision, as `tasks evaluate` does: the same outputs.
    A task whose pictures come from the metrics alone is not evaluated again."""
    from toy_plugin import ToyTask

    monkeypatch.setattr(ToyTask, "report_draws_predictions", draws_predictions)

    evaluations: list[list[float]] = []
    original = ToyTask.predictions

    def recording(self, batch, output):
        if not evaluations or len(evaluations[-1]) >= 40:
            evaluations.append([])
        evaluations[-1].extend(output[:, 0].tolist())
        return original(self, batch, output)

    monkeypatch.setattr(ToyTask, "predictions", recording)
    val = toy_points(tmp_path / "val.csv", n=40, seed=1)
    out = tmp_path / "run"
    result = run(runner, "--data", toy, "--val", val, "--output", out, "--epochs", 3, "--lr", 2.0, "--batch-size", 8,
                 "--warmup-ratio", 0, "--mixed-precision", precision)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["mixed_precision"] == precision
    # Separable points: accuracy peaks at once and never rises above it, while the weights move on.
    assert summary["best_epoch"] < summary["epochs_run"] == 3, summary["history"]
    best = evaluations[summary["best_epoch"] - 1]
    if draws_predictions:
        after_training = evaluations[-1]
        assert len(evaluations) == 4 and after_training != evaluations[2]  # not the last epoch's model
        assert after_training == pytest.approx(best, abs=1e-5)
    else:
        assert len(evaluations) == 3  # one per epoch, none after training
    assert runner.invoke(cli, ["evaluate", "--model", str(out), "--data", str(val)]).exit_code == 0
    assert evaluations[-1] == pytest.approx(best, abs=1e-5)  # the saved model is the best epoch's
    assert evaluations[-1] != evaluations[2]


def test_crashed_run_is_marked_failed_and_resumes(runner, toy, tmp_path, monkeypatch):
    from taskzoo import trainer as trainer_module

    out = tmp_path / "run"
    original = trainer_module.Trainer._end_epoch

    def crash_after_first_epoch(self, epoch, *args):
        original(self, epoch, *args)
        if epoch == 1:  # a crash; Ctrl-C is "interrupted" instead (tests/test_runs.py)
            raise RuntimeError("worker died")

    monkeypatch.setattr(trainer_module.Trainer, "_end_epoch", crash_after_first_epoch)
    crashed = run(runner, "--data", toy, "--output", out, "--epochs", 3)
    assert crashed.exit_code != 0
    assert run_folders.read_status(out) | {"reason": "RuntimeError: worker died"} == run_folders.read_status(out)
    assert run_folders.read_status(out)["status"] == "failed"
    refused = runner.invoke(cli, ["predict", "--model", str(out), "--data", str(toy)])
    assert refused.exit_code == 2 and "is 'failed' (RuntimeError: worker died), not complete" in refused.output

    monkeypatch.setattr(trainer_module.Trainer, "_end_epoch", original)
    resumed = run(runner, "--resume", out)
    assert resumed.exit_code == 0, resumed.output
    assert run_folders.read_status(out)["status"] == "complete"
    assert [e["epoch"] for e in epochs_logged(out)] == [1, 2, 3]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["epochs_run"] == 3 and [h["epoch"] for h in summary["history"]] == [1, 2, 3]


def test_resume_continues_exactly_where_it_stopped(runner, toy, tmp_path):
    """Two epochs, then two more from the checkpoint, ends with the same weights as four at once."""
    from safetensors.torch import load_file

    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["--data", toy, "--warmup-ratio", 0, "--scheduler", "cosine", "--keep-checkpoint"]
    assert run(runner, *common, "--epochs", 4, "--output", straight, "--lr", 0.001).exit_code == 0
    # A run of 2 epochs scheduled for 4: start with --epochs 4 but stop after 2 by crashing.
    from taskzoo import trainer as trainer_module

    original = trainer_module.Trainer._end_epoch

    def stop_after_two(self, epoch, *args):
        original(self, epoch, *args)
        if epoch == 2:
            raise KeyboardInterrupt

    trainer_module.Trainer._end_epoch = stop_after_two
    try:
        run(runner, *common, "--epochs", 4, "--output", split, "--lr", 0.001)
    finally:
        trainer_module.Trainer._end_epoch = original
    assert run(runner, "--resume", split).exit_code == 0
    a = load_file(str(straight / "checkpoint" / "model.safetensors"))
    b = load_file(str(split / "checkpoint" / "model.safetensors"))
    assert all(a[key].allclose(b[key], atol=1e-6) for key in a)


def test_gradient_accumulation_counts_optimizer_steps(runner, toy, tmp_path):
    out = tmp_path / "run"
    # 200 points, 20% validation -> 160 train, batch 8 -> 20 batches; accumulate 4 -> 5 updates/epoch.
    result = run(runner, "--data", toy, "--output", out, "--epochs", 2, "--grad-accum", 4, "--log-every", 1)
    assert result.exit_code == 0, result.output
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["global_step"] == 10


def test_tensorboard_logs_when_asked(runner, toy, tmp_path):
    out = tmp_path / "run"
    assert run(runner, "--data", toy, "--output", out, "--epochs", 1, "--tensorboard").exit_code == 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_mlflow_gets_params_metrics_and_pictures_readable_by_its_own_client(runner, toy, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's default store is in the working folder
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    result = run(runner, "--data", toy, "--output", out, "--epochs", 2, "--lr", 0.02, "--report-to", "mlflow")
    assert result.exit_code == 0, result.output
    client = MlflowClient()  # MLflow's own default, as `mlflow ui` would read it
    experiment = client.get_experiment_by_name("taskzoo-toy")
    (tracked,) = client.search_runs([experiment.experiment_id])
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "run"
    assert float(tracked.data.params["lr"]) == 0.02 and tracked.data.params["epochs"] == "2"
    epochs = client.get_metric_history(tracked.info.run_id, "epoch/val_accuracy")
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m.value for m in epochs] == [r["val_accuracy"] for r in logged if r["type"] == "epoch"]
    artifacts = {a.path for a in client.list_artifacts(tracked.info.run_id)}
    assert {"metrics.json", "config.yaml", "training_curves.png"} <= artifacts


def test_a_tracker_that_is_not_installed_is_one_line_before_any_work(runner, toy, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    result = run(runner, "--data", toy, "--output", tmp_path / "run", "--report-to", "wandb")
    assert result.exit_code == 2 and "--report-to wandb: needs the wandb package: pip install 'taskzoo[wandb]'" in result.output
    assert not (tmp_path / "run").exists()


def test_data_check_errors_stop_before_training(runner, toy, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(toy.read_text().replace("left", "bad", 1))
    result = run(runner, "--data", bad, "--output", tmp_path / "never")
    assert result.exit_code == 2
    assert "label 'bad' is not allowed" in result.output
    assert not (tmp_path / "never").exists()
    checked = runner.invoke(cli, ["check", "toy", "--data", str(bad)])
    assert checked.exit_code == 2 and "200 points" in checked.output


def test_existing_output_folder_is_not_overwritten(runner, toy, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    result = run(runner, "--data", toy, "--output", out)
    assert result.exit_code == 2 and "not empty" in result.output


def test_evaluate_and_predict_with_task_options(runner, toy, tmp_path):
    out = tmp_path / "run"
    assert run(runner, "--data", toy, "--output", out, "--epochs", 2).exit_code == 0
    evaluated = runner.invoke(cli, ["evaluate", "--model", str(out), "--data", str(toy), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["accuracy"] > 0.9
    assert (out / "eval-points" / "metrics.json").exists()
    predicted = runner.invoke(cli, ["predict", "--model", str(out), "--data", str(toy), "--flavour", "sweet"])
    assert predicted.exit_code == 0, predicted.output
    assert predicted.stdout.splitlines()[:1] in (["left"], ["right"]) and len(predicted.stdout.splitlines()) == 200
    wrong = runner.invoke(cli, ["predict", "--model", str(out), "--data", str(toy), "--colour", "red"])
    assert wrong.exit_code == 2 and "error: tasks predict: no option --colour; did you mean --flavour?" in wrong.output


def test_warmup_then_linear_cosine_or_no_decay():
    linear = lr_lambda(10, 110, "linear")
    assert linear(0) == pytest.approx(0.1) and linear(9) == pytest.approx(1.0)
    assert linear(60) == pytest.approx(0.5) and linear(110) == pytest.approx(0.0)
    cosine = lr_lambda(0, 100, "cosine")
    assert cosine(0) == pytest.approx(1.0) and cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)
    constant = lr_lambda(10, 110, "constant")
    assert constant(0) == pytest.approx(0.1) and constant(10) == constant(60) == constant(110) == pytest.approx(1.0)


def test_optimizer_follows_the_recipe(runner, toy, tmp_path):
    import torch

    out = tmp_path / "run"
    assert run(runner, "--data", toy, "--output", out, "--epochs", 1, "--weight-decay", 0.25, "--lr", 0.05,
               "--keep-checkpoint").exit_code == 0
    groups = torch.load(out / "checkpoint" / "optimizer.pt", weights_only=True)["param_groups"]
    # Weights decay as asked; biases (1-d tensors) do not.
    assert [g["weight_decay"] for g in groups] == [0.25, 0.0]
    assert all(g["initial_lr"] == 0.05 for g in groups)


def test_gradient_checkpointing_trains_the_same_steps_with_activations_recomputed(tmp_path, review_rows):
    """transformers' non-reentrant checkpointing replays dropout's draws: the same losses, step by step."""
    from conftest import write_csv

    from taskzoo import pipeline
    from taskzoo.plugins import PluginHost
    from taskzoo.trainer import enable_gradient_checkpointing

    data = write_csv(tmp_path / "reviews.csv", ["review", "sentiment"], review_rows[:32] + review_rows[-32:])
    quick = {"epochs": 1, "max_length": 16, "batch_size": 16, "log_every": 1, "device": "cpu", "progress": False}
    losses = {}
    for checkpointing in (False, True):
        run = taskzoo.train("sentiment", data, output=tmp_path / f"gc-{checkpointing}", gradient_checkpointing=checkpointing, **quick)
        assert run.config["gradient_checkpointing"] is checkpointing
        losses[checkpointing] = [json.loads(line)["loss"] for line in (run.folder / "metrics.jsonl").read_text().splitlines()
                                 if json.loads(line)["type"] == "step"]
    assert len(losses[True]) == 4 and losses[True] == pytest.approx(losses[False], rel=1e-4)
    spec = PluginHost().task("sentiment")
    prepared = pipeline.prepare(spec, pipeline.run_values(spec, {"data": data, "max_length": 16}))
    assert "BertModel" in enable_gradient_checkpointing(prepared.model)
    assert any(getattr(module, "gradient_checkpointing", False) is True for module in prepared.model.modules())


def test_gradient_checkpointing_without_a_supporting_network_is_one_warning(runner, toy, tmp_path):
    result = run(runner, "--data", toy, "--output", tmp_path / "run", "--epochs", 1, "--gradient-checkpointing")
    assert result.exit_code == 0, result.output
    assert result.output.count("warning: --gradient-checkpointing: no transformers or timm network") == 1


def test_gradient_checkpointing_reaches_the_timm_encoder_of_a_segmentation_model(tmp_path):
    from taskzoo.plugins import PluginHost

    sample = PluginHost().task("segmentation").sample
    run = taskzoo.train("segmentation", sample.path(sample.train), output=tmp_path / "seg", epochs=1, image_size=64,
                        batch_size=4, device="cpu", progress=False, gradient_checkpointing=True)
    assert run.metrics["epochs_run"] == 1 and run.config["gradient_checkpointing"] is True
    from taskzoo import pipeline
    from taskzoo.trainer import enable_gradient_checkpointing

    spec = PluginHost().task("segmentation")
    prepared = pipeline.prepare(spec, pipeline.run_values(spec, {"data": sample.path(sample.train), "image_size": 64}))
    assert enable_gradient_checkpointing(prepared.model), "the timm encoder took no checkpointing"
    # timm recomputes checkpointed blocks with PyTorch's own kernels, so training keeps them throughout.
    values = pipeline.run_values(spec, {"data": sample.path(sample.train), "image_size": 64, "device": "cpu"})
    assert pipeline.make_trainer(pipeline.prepare(spec, values), tmp_path / "plain")._cpu_kernels is True
    values["gradient_checkpointing"] = True
    assert pipeline.make_trainer(pipeline.prepare(spec, values), tmp_path / "checkpointed")._cpu_kernels is False


def test_training_forward_passes_run_under_the_cpu_kernels_and_evaluation_does_not(runner, toy, tmp_path, monkeypatch):
    from toy_plugin import ToyModel

    from taskzoo import cpu_kernels

    seen = []
    forward = ToyModel.forward

    def recording(self, batch):
        seen.append((self.training, bool(getattr(cpu_kernels._active, "modes", []))))
        return forward(self, batch)

    monkeypatch.setattr(ToyModel, "forward", recording)
    result = run(runner, "--data", toy, "--output", tmp_path / "run", "--epochs", 2)
    assert result.exit_code == 0, result.output
    assert {fast for training, fast in seen if training} == {True}
    assert {fast for training, fast in seen if not training} == {False}


def test_training_on_the_cpu_clips_gradients_with_the_cpu_kernels_clipping(runner, toy, tmp_path, monkeypatch):
    from taskzoo import trainer

    norms = []
    clip = trainer.clip_grad_norm_

    def recording(parameters, max_norm):
        norms.append((max_norm, float(clip(parameters, max_norm))))
        return norms[-1][1]

    monkeypatch.setattr(trainer, "clip_grad_norm_", recording)
    out = tmp_path / "run"
    result = run(runner, "--data", toy, "--output", out, "--epochs", 2, "--batch-size", 8, "--max-grad-norm", 0.5)
    assert result.exit_code == 0, result.output
    assert len(norms) == json.loads((out / "checkpoint" / "trainer_state.json").read_text())["global_step"] > 0
    assert {max_norm for max_norm, _ in norms} == {0.5} and all(norm > 0 for _, norm in norms)


def test_training_on_the_cpu_keeps_freed_memory_for_reuse(runner, toy, tmp_path, monkeypatch):
    from taskzoo import trainer

    calls = []
    monkeypatch.setattr(trainer, "keep_freed_memory_for_reuse", lambda: calls.append("kept") or True)
    result = run(runner, "--data", toy, "--output", tmp_path / "run", "--epochs", 1, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert calls == ["kept"]


def test_metrics_record_the_peak_memory_of_the_run(runner, toy, tmp_path):
    import psutil

    before = psutil.Process().memory_info().rss
    assert run(runner, "--data", toy, "--output", tmp_path / "run", "--epochs", 1).exit_code == 0
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # The process's peak up to the end of training: at least what it held before, not beyond the machine.
    assert before <= summary["peak_rss_bytes"] <= psutil.virtual_memory().total
    assert summary["peak_gpu_memory_bytes"] is None or summary["peak_gpu_memory_bytes"] > 0


def test_a_channels_last_model_computes_saves_and_loads_as_a_contiguous_one(tmp_path):
    """Vision tasks train channels-last (Task.channels_last); safetensors writes only contiguous
    tensors, so saving packs the model and restores its layout after."""
    import copy

    import torch
    from safetensors.torch import load_model, save_model

    from taskzoo.trainer import contiguous_for_saving

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3))
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 16, 16)
    assert not fast[0].weight.is_contiguous() and fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(model(images), fast(images), atol=1e-5)
    with contiguous_for_saving(fast) as packed:
        save_model(packed, str(tmp_path / "model.safetensors"))
    assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)  # back as it trains
    loaded = copy.deepcopy(model)
    torch.nn.init.zeros_(loaded[0].weight)
    load_model(loaded, str(tmp_path / "model.safetensors"))
    assert torch.equal(loaded[0].weight, model[0].weight) and torch.equal(loaded[3].weight, model[3].weight)


def test_one_process_trains_and_evaluates_in_different_precisions(runner, toy, tmp_path):
    """accelerate allows one precision per process: training in bf16 and then evaluating (always
    full precision) or training in full precision, as a notebook does, must each just work."""
    bf16 = taskzoo.train("toy", data=toy, output=tmp_path / "bf16", epochs=1, mixed_precision="bf16", progress=False)
    assert bf16.metrics["mixed_precision"] == "bf16"
    assert 0.0 <= bf16.evaluate(toy)["accuracy"] <= 1.0
    full = taskzoo.train("toy", data=toy, output=tmp_path / "full", epochs=1, mixed_precision="no", progress=False)
    assert full.metrics["mixed_precision"] == "no"
    assert taskzoo.train("toy", data=toy, output=tmp_path / "again", epochs=1, mixed_precision="bf16",
                         progress=False).metrics["mixed_precision"] == "bf16"


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "no-amx"])
@pytest.mark.parametrize("task_pays", [True, False], ids=["task-pays", "task-does-not"])
def test_auto_precision_on_the_cpu_is_bf16_only_where_the_task_and_the_cpu_gain(amx, task_pays, toy, tmp_path, monkeypatch):
    from toy_plugin import ToyTask

    from taskzoo import trainer

    monkeypatch.setattr(trainer, "cpu_has_bf16_matrix_units", lambda: amx)
    monkeypatch.setattr(ToyTask, "cpu_bf16", task_pays)
    run = taskzoo.train("toy", data=toy, output=tmp_path / "run", epochs=1, device="cpu", progress=False)
    assert run.metrics["mixed_precision"] == ("bf16" if amx and task_pays else "no")
    assert trainer.resolved_mixed_precision("no", on_gpu=False, cpu_bf16=True) == "no"
    assert trainer.resolved_mixed_precision("bf16", on_gpu=False) == "bf16"
    with pytest.raises(taskzoo.UserError, match="fp16 needs a CUDA device"):
        trainer.resolved_mixed_precision("fp16", on_gpu=False)
