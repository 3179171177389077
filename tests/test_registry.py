"""registry.yaml: valid against its schema, every entry usable, malformed entries named."""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import pytest
import yaml

from taskzoo import UserError
from taskzoo.weights import available_offline, locate, resolve_backbone
from taskzoo.plugins import PluginHost
from taskzoo.registry import DEFAULT_PATH, load_registry, parse_registry

ROOT = Path(__file__).resolve().parents[1]


def test_packaged_registry_is_the_top_level_file():
    assert DEFAULT_PATH.resolve() == (ROOT / "registry.yaml").resolve()


def test_every_registry_task_is_provided_by_an_installed_plugin_and_its_default_works_offline():
    host = PluginHost()
    specs = load_registry()
    for task in {spec.task for spec in specs}:
        host.task(task)
        default = host.default_backbone(task)
        assert default.offline, f"{task}: the default backbone must ship in a package"
        assert available_offline(default), f"{task}: {default.name} is not installed"
        if default.source == "implicit":  # an algorithm with no weights: its class must import
            module, _, name = default.location.partition(":")
            assert hasattr(importlib.import_module(module), name), default.location
        else:
            assert Path(locate(default)).exists()


def test_default_text_backbone_is_the_packaged_minilm():
    default = PluginHost().default_backbone("sentiment")
    folder = Path(locate(default))
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()


@pytest.fixture
def document():
    return yaml.safe_load((ROOT / "registry.yaml").read_text())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["tasks"]["sentiment"]["backbones"][1].pop("licence"), r"backbones\[1\] \(distilbert-base-uncased\): missing 'licence'"),
        (lambda d: d["tasks"]["sentiment"]["backbones"][1].update(params="66M"), r"'params' must be int, got '66M'"),
        (lambda d: d["tasks"]["sentiment"]["backbones"][1].update(source="FTP site"), r"source 'FTP site' is not a source name"),
        (lambda d: d["tasks"]["sentiment"]["backbones"][1].update(default=True), r"exactly one backbone must be 'default: true', found 2"),
        (lambda d: d["tasks"]["sentiment"]["backbones"][2].update(name="distilbert-base-uncased"), r"duplicate name"),
        (lambda d: d["tasks"]["sentiment"]["backbones"][1].update(colour="red"), r"unknown key\(s\) colour"),
        (lambda d: d.update(version=2), r"version: 1"),
        (lambda d: d["tasks"]["recommendation"]["backbones"][-1].update(default=False),
         r"exactly one image encoder backbone must be 'default: true', found 0"),
    ],
)
def test_malformed_entries_are_named(document, mutate, message):
    broken = copy.deepcopy(document)
    mutate(broken)
    with pytest.raises(UserError, match=message):
        parse_registry(broken)


def test_backbone_resolution(tmp_path):
    host = PluginHost()
    assert resolve_backbone(host, "sentiment", None).name == "all-minilm-l6-v2"
    assert resolve_backbone(host, "sentiment", "roberta-base").location == "FacebookAI/roberta-base"
    # The upstream hub id of an offline entry resolves to the offline copy.
    assert resolve_backbone(host, "sentiment", "sentence-transformers/all-MiniLM-L6-v2").source == "package"
    assert resolve_backbone(host, "sentiment", str(tmp_path)).source == "local"
    assert resolve_backbone(host, "sentiment", "someone/some-model").source == "hub"
    with pytest.raises(UserError, match="no such folder"):
        resolve_backbone(host, "sentiment", "./missing/folder")


def test_hub_probe_gives_up_on_a_hanging_name_lookup(monkeypatch):
    """A socket timeout does not cover DNS; a resolver that hangs must still cost only the timeout."""
    import socket
    import time

    from taskzoo.weights import hub_reachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    def hanging_lookup(*args, **kwargs):
        time.sleep(3)
        raise socket.gaierror("lookup timed out")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    start = time.perf_counter()
    assert hub_reachable(timeout=0.5) is False
    assert time.perf_counter() - start < 2.0


def test_a_role_keeps_a_task_s_other_models_apart_from_its_backbones():
    host = PluginHost()
    assert resolve_backbone(host, "recommendation", None).name == "als"
    text = resolve_backbone(host, "recommendation", None, "text encoder")
    assert (text.name, text.source) == ("all-minilm-l6-v2", "package")
    assert resolve_backbone(host, "recommendation", None, "image encoder").name == "efficientnet_lite0"
    # An encoder's name is not a --backbone: it resolves as an ad-hoc hub id there, not as the encoder.
    assert resolve_backbone(host, "recommendation", "all-minilm-l6-v2").source == "hub"
    assert [b.name for b in host.backbones("recommendation", "")] == ["als", "bpr", "knn-bm25", "knn-cosine", "lmf"]
    with pytest.raises(UserError, match="--text-encoder ./nope: .*known text encoders for recommendation: all-minilm-l6-v2"):
        resolve_backbone(host, "recommendation", "./nope", "text encoder", "--text-encoder")
