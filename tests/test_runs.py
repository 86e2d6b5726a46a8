import json
from dataclasses import dataclass, field

import pytest

from workbench.pretrain import PretrainConfig
from workbench.runs import ConfigError, RunDir, config_from_dict, load_config


@dataclass
class ToyConfig:
    steps: int = 3
    rate: float = 0.1
    name: str | None = None
    tags: list[str] = field(default_factory=list)


def test_config_from_yaml_and_json(tmp_path):
    (tmp_path / "c.yaml").write_text("steps: 5\nrate: 1\ntags: [a, b]\n")
    (tmp_path / "c.json").write_text(json.dumps({"name": "x"}))
    assert load_config(ToyConfig, tmp_path / "c.yaml") == ToyConfig(steps=5, rate=1, tags=["a", "b"])
    assert load_config(ToyConfig, tmp_path / "c.json") == ToyConfig(name="x")


def test_config_errors_name_field_and_source(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['stpes'\].*known fields"):
        config_from_dict(ToyConfig, {"stpes": 3}, source="my.yaml")
    with pytest.raises(ConfigError, match=r"my.yaml: field 'steps' must be"):
        config_from_dict(ToyConfig, {"steps": "three"}, source="my.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(ToyConfig, tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(ToyConfig, tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="preset must be one of"):
        config_from_dict(PretrainConfig, {"preset": "huge"})


def test_run_dir_saves_configs_and_appends_metrics(tmp_path):
    run = RunDir(tmp_path / "run")
    run.save_config("pretrain", PretrainConfig(max_steps=7), n_texts=3)
    saved = json.loads((tmp_path / "run" / "pretrain" / "config.json").read_text())
    assert saved["max_steps"] == 7 and saved["n_texts"] == 3
    assert run.load_config("pretrain", PretrainConfig).max_steps == 7
    run.log_metrics("pretrain", 1, {"pretrain/loss": 2.0})
    run.log_metrics("sft", 1, {"sft/loss": 1.0})
    with open(run.metrics_path, "a") as handle:
        handle.write('{"stage": "pretrain", "step": 2, "pretr')  # a line cut by a crash
    run.log_metrics("pretrain", 3, {"pretrain/loss": 1.5})  # lands on its own line after the cut one
    assert [r["pretrain/loss"] for r in run.read_metrics("pretrain")] == [2.0, 1.5]
    assert len(run.read_metrics()) == 3


def test_clear_metrics_drops_only_that_stage(tmp_path):
    run = RunDir(tmp_path)
    run.log_metrics("pretrain", 1, {"pretrain/loss": 3.0})
    run.log_metrics("reward", 1, {"rm/loss": 0.7})
    run.clear_metrics("pretrain")
    assert run.read_metrics("pretrain") == [] and len(run.read_metrics("reward")) == 1
