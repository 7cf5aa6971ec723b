"""The config trees: every YAML loads, overrides are checked, and the schema grows only on purpose."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from finetune.config import FinetuneConfig, load_finetune_config
from finetune.teacher_student import SemiSupConfig
from launch.common.errors import BadInput
from launch.runtime.config import config_hash, since, to_yaml
from pretrain.config import CONFIG_DIR, PretrainConfig, load_pretrain_config

SNAPSHOT = Path(__file__).with_name("config_keys.txt")


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (CONFIG_DIR / "recipes").glob("*.yaml")))
def test_every_recipe_loads_and_validates(recipe):
    method = "audiomae" if recipe.startswith("audiomae") else "ssast"
    cfg = load_pretrain_config([f"method={method}", f"recipe={recipe}"])
    assert cfg.model.encoder.size == "base" and cfg.model.encoder.target_frames == 1024
    assert cfg.model.encoder.num_patches == 512


def test_method_yaml_and_interpolation():
    ssast = load_pretrain_config([])
    assert ssast.method == "ssast" and ssast.ssast.encoder.cls_tokens == 2
    mae = load_pretrain_config(["method=audiomae", "data.features.target_frames=128", "audiomae.window=[4,4]"])
    assert mae.audiomae.encoder.target_frames == 128 and mae.audiomae.encoder.token_order == "time"
    assert "ssast:" not in to_yaml(mae) and "audiomae:" in to_yaml(mae)


@pytest.mark.parametrize("item,expected", [("optim.lrr=1", "optim.lrr"), ("optim.lr=fast", "optim.lr"),
                                           ("method=byol", "method='byol'"), ("steps", "expected key=value"),
                                           ("ssast.mask_patches=48", "ssast.mask_patches=48"),
                                           ("recipe=nope", "nope.yaml: no such config file")])
def test_bad_overrides_are_one_line(item, expected):
    with pytest.raises(BadInput) as e:
        load_pretrain_config([item])
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_config_hash_names_the_run_by_what_changes_results():
    a, b = load_pretrain_config([]), load_pretrain_config(["log.every_steps=1", "checkpoint.keep_last=9"])
    assert config_hash(a) == config_hash(b) != config_hash(load_pretrain_config(["optim.lr=1e-3"]))


@dataclass
class _Inner:
    a: int = 1


@dataclass
class _Old:
    x: int = 3
    inner: _Inner = field(default_factory=_Inner)
    items: list[_Inner] = field(default_factory=lambda: [_Inner()])


@dataclass
class _NewInner(_Inner):
    b: bool = since("0.2", False)


@dataclass
class _New:
    """_Old, after a release added ``inner.b``, ``items[].b`` and ``extra``."""

    x: int = 3
    inner: _NewInner = field(default_factory=_NewInner)
    items: list[_NewInner] = field(default_factory=lambda: [_NewInner()])
    extra: _Inner = since("0.2", default_factory=_Inner)


def test_a_field_added_later_keeps_old_hashes_until_it_is_changed():
    """``since`` fields: the hash of a config that leaves them at their default is the hash it had before."""
    assert config_hash(_New()) == config_hash(_Old())
    assert config_hash(_New(inner=_NewInner(b=True))) != config_hash(_Old())
    assert config_hash(_New(items=[_NewInner(b=True)])) != config_hash(_Old())
    assert config_hash(_New(extra=_Inner(a=2))) != config_hash(_Old())


def _keys(schema) -> list[str]:
    tree = OmegaConf.to_container(OmegaConf.structured(schema))

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, f"{prefix}{k}.")
        else:
            yield prefix[:-1]
    return sorted(walk(tree, ""))


def test_schema_snapshot():
    """Adding or renaming a config key is a deliberate act: update tests/unit/config_keys.txt with it."""
    semisup_only = ("unlabelled", "pseudo", "pseudo_weight", "teacher")
    current = [f"pretrain {k}" for k in _keys(PretrainConfig)] + [f"finetune {k}" for k in _keys(FinetuneConfig)] + \
              [f"semisup {k}" for k in _keys(SemiSupConfig) if k.split(".")[0] in semisup_only]
    if not SNAPSHOT.exists():  # first run writes it
        SNAPSHOT.write_text("\n".join(current) + "\n")
    assert current == SNAPSHOT.read_text().split("\n")[:-1], "config keys changed: update tests/unit/config_keys.txt"


def test_finetune_defaults_are_the_tau_shape():
    cfg = load_finetune_config([])
    assert (cfg.encoder.stride_freq, cfg.encoder.stride_time, cfg.data.features.target_frames) == (10, 10, 100)


@pytest.mark.parametrize("argv,expected", [([], "c19ad7fa"), (["method=audiomae"], "e05f31af"),
                                           (["recipe=ssast_base_patch400"], "4b04dd6c"),
                                           (["method=audiomae", "recipe=audiomae_base_as2m"], "b01592dd")])
def test_old_run_folders_keep_their_names(argv, expected):
    """Run folders are named by the config hash: these are the names the embedded default and the recipes had
    before the runtime moved to launch/runtime, so an old folder resumes with the same command."""
    assert config_hash(load_pretrain_config(argv)) == expected


def test_old_finetune_and_semisup_folders_keep_their_names():
    from finetune.teacher_student import load_semisup_config

    assert config_hash(load_finetune_config([])) == "e41b642b"
    assert config_hash(load_finetune_config(["ckpt=none"])) == "21e92005"
    assert config_hash(load_semisup_config([])) == "9f0ebeec"


@pytest.mark.parametrize("item,expected", [
    ("steps=0", "steps=0: expected at least 1"), ("steps=-5", "steps=-5"),
    ("data.stream.batch_size=0", "data.stream.batch_size=0: expected >= 1"),
    ("checkpoint.every_steps=0", "checkpoint.every_steps=0: expected >= 1"),
    ("log.every_steps=0", "log.every_steps=0: expected >= 1"),
    ("eval_every=-1", "eval_every=-1"), ("data.stream.num_workers=-1", "data.stream.num_workers=-1"),
    ("data.stream.clip_seconds=0", "data.stream.clip_seconds=0"), ("optim.lr=-1", "optim.lr=-1.0: expected"),
    ("optim.warmup_steps=-1", "optim.warmup_steps=-1"), ("data.stream.sample_rate=700000", "8000..192000"),
    ("data.features.freq_mask=-3", "data.features.freq_mask=-3"), ("deepspeed.grad_accum=0", "grad_accum=0"),
    ("data.synthetic.duration=0", "data.synthetic.duration=0"), ("checkpoint.keep_last=-1", "keep_last=-1")])
def test_out_of_range_values_are_refused_in_one_line(item, expected):
    with pytest.raises(BadInput) as e:
        load_pretrain_config([item])
    assert expected in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("item,expected", [("eval_every=0", "eval_every=0: expected >= 1"), ("steps=0", "steps=0"),
                                           ("early_stop=-1", "early_stop=-1"), ("optim.layer_decay=0", "layer_decay"),
                                           ("augment.mixup=2", "augment.mixup=2"), ("num_classes=1", "num_classes=1"),
                                           ("encoder.stride_time=0", "encoder.stride_time=0")])
def test_fine_tuning_ranges(item, expected):
    with pytest.raises(BadInput) as e:
        load_finetune_config([item])
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_a_config_file_holding_a_list_and_broken_yaml_in_an_override_are_one_line(tmp_path):
    listing = tmp_path / "list.yaml"
    listing.write_text("- steps: 3\n- optim: {lr: 1}\n")
    with pytest.raises(BadInput, match=r"list.yaml: expected a mapping of config keys \(key: value\), got a list"):
        load_pretrain_config([f"config={listing}"])
    for item in ("data.train=[{path: /x", "optim.betas=[0.9, 0.95"):
        with pytest.raises(BadInput) as e:
            load_pretrain_config([item])
        assert f"argument {item!r}: the value is not valid YAML" in str(e.value) and "\n" not in str(e.value)


def test_how_a_run_computes_may_change_on_resume_but_not_what_it_computes():
    """Compilation, recomputation and read retries (``how_not_what`` fields) never name a new run folder, and a
    resumed run may switch them; a change of what is computed is still refused."""
    from launch.runtime.config import config_tree, how_not_what_keys
    from launch.runtime.run_folder import config_changes

    plain = load_pretrain_config([])
    faster = load_pretrain_config(["ssast.compile=true", "ssast.activation_checkpointing=1",
                                   "data.stream.read_retries=9"])
    assert config_hash(faster) == config_hash(plain) == "c19ad7fa"
    keys = how_not_what_keys(faster)
    assert {"ssast.compile", "ssast.activation_checkpointing", "data.stream.read_retries"} <= keys
    assert config_changes(config_tree(plain), config_tree(faster), keys) == []
    other = load_pretrain_config(["optim.lr=1e-3", "ssast.compile=true"])
    assert config_changes(config_tree(plain), config_tree(other), keys) == ["optim.lr: 0.0005 -> 0.001"]


def test_every_reader_of_a_run_folders_config_refuses_a_damaged_one_in_one_line(tmp_path):
    """One reader (run_folder.read_config) for the resume check, the teachers' features and the export's
    preprocessor; the export fell back to the default features on a damaged file before, silently."""
    from finetune.conversion import ExportConfig, features_of
    from finetune.teacher_student import teacher_features
    from launch.runtime.run_folder import read_config

    run = tmp_path / "run"
    run.mkdir()
    assert read_config(run) is None
    (run / "config.yaml").write_text("data: {features: {sample_rate: 22050}}\n")
    assert read_config(run) == {"data": {"features": {"sample_rate": 22050}}}
    assert features_of(run / "best.pt", ExportConfig())["sample_rate"] == 22050
    for text, what in (("data: {features: [\n", "not valid YAML"), ("- 1\n- 2\n", "holds a list")):
        (run / "config.yaml").write_text(text)
        for read in (lambda: read_config(run), lambda: features_of(run / "best.pt", ExportConfig()),
                     lambda: teacher_features(run, SemiSupConfig())):
            with pytest.raises(BadInput) as e:
                read()
            assert str(e.value).startswith(f"{run / 'config.yaml'}: {what}") and "\n" not in str(e.value)
