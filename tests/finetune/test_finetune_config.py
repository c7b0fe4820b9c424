"""Fine-tuning config: files, overrides, validation and help (no model is loaded here)."""

import pytest
import yaml

from vla.commands.finetune import build_parser, main, make_config
from vla.finetune.config import FinetuneConfig, all_keys, load_file, parse_data_arg
from vla.errors import ConfigError


def _cfg(argv):
    args, rest = build_parser().parse_known_args(argv)
    return make_config(args, rest)[0]


def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    cfg = FinetuneConfig()
    cfg.datasets = {"so101": parse_data_arg("so101=data/so101")[1]}
    cfg.validate()
    assert cfg.lora.target_modules == "language-model" and not cfg.lora.train_vision and cfg.lora.train_projector
    path = tmp_path / "c.yaml"
    path.write_text(cfg.dump())
    assert FinetuneConfig.from_dict(load_file(path)).to_dict() == cfg.to_dict()


def test_yaml_and_toml_files_give_the_same_config(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "base: default\ndatasets:\n  arm: {path: data/arm, weight: 2}\n  aloha: {path: data/aloha, weight: 1, "
        "chunk_size: 16}\nmodel: {action_tokenizer: fast, decoding: autoregressive, base_options: {num_layers: 8}}\n"
        "train: {lr: 1.0e-4, steps: 50}\nlora: {target_modules: [q_proj, v_proj]}\n")
    (tmp_path / "c.toml").write_text(
        'base = "default"\n[datasets.arm]\npath = "data/arm"\nweight = 2\n[datasets.aloha]\npath = "data/aloha"\n'
        'weight = 1\nchunk_size = 16\n[model]\naction_tokenizer = "fast"\ndecoding = "autoregressive"\nbase_options = {num_layers = 8}\n'
        '[train]\nlr = 1e-4\nsteps = 50\n[lora]\ntarget_modules = ["q_proj", "v_proj"]\n')
    a = FinetuneConfig.from_dict(load_file(tmp_path / "c.yaml")).validate()
    b = FinetuneConfig.from_dict(load_file(tmp_path / "c.toml")).validate()
    assert a.to_dict() == b.to_dict()
    assert a.datasets["aloha"].chunk_size == 16 and a.model.base_options == {"num_layers": 8}
    assert a.lora.target_modules == ["q_proj", "v_proj"]


def test_command_line_overrides_are_typed_and_win_over_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text("train: {lr: 0.1, steps: 5}\ndatasets: {arm: data/arm}\n")
    cfg = _cfg(["--config", str(tmp_path / "c.yaml"), "--train.lr", "1e-4", "--train.gradient_checkpointing", "yes",
                "--lora.target_modules", "q_proj,v_proj", "--model.base_options", "{num_layers: 8, image_tokens: 16}",
                "--seed", "3", "--datasets.arm.weight", "0.5", "--datasets.arm.cameras", "observation.images.top"])
    assert cfg.train.lr == 1e-4 and cfg.train.steps == 5 and cfg.train.gradient_checkpointing is True
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.seed == 3
    assert cfg.model.base_options == {"num_layers": 8, "image_tokens": 16}
    assert cfg.datasets["arm"].weight == 0.5 and cfg.datasets["arm"].cameras == ["observation.images.top"]
    # A plain list key (no None allowed) takes a YAML list or comma-separated names, never characters.
    for value in ("[delta_x, delta_y]", "delta_x,delta_y"):
        assert _cfg(["--model.displacement_actions", value]).model.displacement_actions == ["delta_x", "delta_y"]
    assert _cfg(["--model.displacement_actions", "delta_z"]).model.displacement_actions == ["delta_z"]


def test_data_arguments():
    assert parse_data_arg("so101=data/so101:0.25")[1].weight == 0.25
    name, spec = parse_data_arg("mw=/mnt/c:/data")  # a colon that is part of the path
    assert (name, spec.path, spec.weight) == ("mw", "/mnt/c:/data", None)
    with pytest.raises(ConfigError, match="NAME=DIR"):
        parse_data_arg("data/so101")
    cfg = _cfg(["--data", "a=x:1", "--data", "b=y"])
    with pytest.raises(ConfigError, match="weights are given for"):
        cfg.validate()


@pytest.mark.parametrize("text, match", [
    ("train: {lrr: 0.1}\n", "Did you mean 'lr'"),
    ("trian: {lr: 0.1}\n", "Did you mean 'train'"),
    ("datasets: {arm: {path: x, wieght: 1}}\n", "Did you mean 'weight'"),
    ("train: {steps: many}\n", "train.steps"),
    ("model: {decoding: parallel, action_tokenizer: fast}\ndatasets: {a: x}\n", "needs model.action_tokenizer=bins"),
    ("train: {padded_steps: mask}\nmodel: {action_tokenizer: fast, decoding: autoregressive}\ndatasets: {a: x}\n",
     "cannot be masked"),
    ("model: {action_tokenizer: fast, decoding: parallel}\ndatasets: {a: x}\n", "with FAST leave model.decoding unset"),
    ("lora: {quantize: 8bit}\ndatasets: {a: x}\n", "choose one of"),
    ("train: {label_sigma: 2}\nmodel: {action_tokenizer: fast, decoding: autoregressive}\ndatasets: {a: x}\n",
     "label_sigma needs"),
    ("train: {label_sigma: -1}\ndatasets: {a: x}\n", "label_sigma must be >= 0"),
    ("", "no training data"),
])
def test_bad_config_files_are_rejected_with_the_key(tmp_path, capsys, text, match):
    (tmp_path / "c.yaml").write_text(text)
    assert main(["--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_policy_options_have_one_set_of_defaults():
    from vla.configuration import VLAConfig

    model = FinetuneConfig().model
    for key in VLAConfig.OPTIONS:  # the model section's policy options default to VLAConfig's
        assert getattr(model, key) == getattr(VLAConfig(), key), key
    assert model.policy_config().decoding == "parallel"  # bins: one forward
    model.action_tokenizer = "fast"
    assert model.policy_config().decoding == "autoregressive"


def test_unknown_command_line_option_suggests_the_key(capsys):
    assert main(["--train.lrr", "0.1", "--data", "a=x"]) == 2
    assert "Did you mean 'train.lr'" in capsys.readouterr().err
    assert main(["--datasets.nope.weight", "1", "--data", "a=x"]) == 2
    assert "no dataset named 'nope'" in capsys.readouterr().err


def test_help_documents_every_key_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for key in all_keys():
        assert f"--{key}" in text, key
    assert "(default: 0.0003)" in " ".join(text.split())  # the help wraps with the terminal width
    assert "--dry-run" in text and "--resume" in text
    assert "accelerate launch" in text


def test_resume_refuses_changes_that_break_exactness(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    cfg = FinetuneConfig(out=str(run))
    cfg.datasets = {"a": parse_data_arg("a=x")[1]}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert main(["--resume", str(run), "--train.lr", "1"]) == 2
    assert "cannot change when resuming" in capsys.readouterr().err
    args, rest = build_parser().parse_known_args(["--resume", str(run), "--train.steps", "9"])
    cfg2, resume = make_config(args, rest)
    assert resume and cfg2.train.steps == 9


@pytest.mark.parametrize("name", ["three_robots.yaml", "fast_tokenizer.yaml", "gpu_full.toml"])
def test_example_configs_are_valid(name):
    from pathlib import Path

    cfg = FinetuneConfig.from_dict(load_file(Path(__file__).resolve().parents[2] / "finetune" / "configs" / name))
    if not cfg.datasets:
        cfg.datasets = {"x": parse_data_arg("x=data/x")[1]}
    cfg.validate()


def test_vla_cli_dispatches_finetune_and_export(capsys):
    from vla.cli import main as vla_main

    with pytest.raises(SystemExit):
        vla_main(["finetune", "--help"])
    assert "usage: vla finetune" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        vla_main(["export", "--help"])
    assert "usage: vla export" in capsys.readouterr().out


def test_export_refuses_a_directory_without_a_run(tmp_path, capsys):
    from vla.commands.export import main as export_main

    assert export_main([str(tmp_path), "--merge", "--out", str(tmp_path / "out")]) == 2
    assert "holds no finished run" in capsys.readouterr().err


def test_a_config_written_before_prompt_templates_were_required_still_loads():
    from vla.configuration import VLAConfig

    cfg = FinetuneConfig.from_dict({"model": {"prompt_template": None}})  # as older run directories stored it
    assert cfg.model.policy_config().prompt_template == VLAConfig().prompt_template
