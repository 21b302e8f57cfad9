"""The config schema: presets, overrides typed by the schema, and one-line errors for bad keys and values."""
import pytest

from job import config as configlib
from job.config import Config
from job.errors import ConfigError

EXPECTED_PRESETS = {
    "cifar100_resnet18", "cifar100_elu", "cifar100_vgg16", "cifar100_vgg16_transfer", "cifar100_resnet50_transfer",
    "cifar10_resnet20", "cifar10_resnet56", "cifar10_resnet110", "cifar10_simple_cnn", "cifar100_simple_cnn",
    "cifar10_mlp", "digits_resnet20",
}


def test_every_named_preset_exists_loads_and_has_a_description():
    presets = configlib.list_presets()
    assert EXPECTED_PRESETS <= set(presets)
    for name, description in presets.items():
        cfg = configlib.load_config(name)
        assert cfg.preset == name
        assert len(description) > 20, f"{name} needs a one-line description as its first comment"


def test_default_config_is_resnet18_on_cifar100():
    cfg = configlib.load_config()
    assert (cfg.model.name, cfg.data.name) == ("resnet18", "cifar100")


def test_required_keys_exist():
    keys = set(configlib.all_keys())
    assert {"model.name", "data.name", "data.dir", "train.epochs", "train.batch_size", "train.seed", "run.dir",
            "distribute.backend"} <= keys


def test_overrides_are_typed_by_the_schema():
    cfg = configlib.load_config("cifar10_resnet20", ["train.epochs=3", "optim.lr=0.05", "data.augment.flip=false",
                                                     "optim.step_epochs=[1, 2]", "run.dir=/tmp/x", "model.l2=5e-4"])
    assert cfg.model.l2 == 5e-4
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.optim.lr == 0.05
    assert cfg.data.augment.flip is False
    assert cfg.optim.step_epochs == (1.0, 2.0)
    assert cfg.run_dir == "/tmp/x"


def test_preset_only_overrides_what_differs():
    cfg = configlib.load_config("cifar10_resnet20")
    assert cfg.train.seed == Config().train.seed  # not in the preset: the default
    assert cfg.optim.weight_decay == 1e-4  # in the preset


def test_run_dir_defaults_to_the_preset_name():
    assert configlib.load_config("digits_resnet20").run_dir == "runs/digits_resnet20"


def test_round_trip_through_yaml():
    cfg = configlib.load_config("cifar100_elu", ["train.epochs=7"])
    again = configlib.from_dict(configlib.parse_yaml(configlib.to_yaml(cfg), "saved"))
    assert again == cfg


@pytest.mark.parametrize("override, fragment", [
    (["train.epoch=3"], "unknown config key 'train.epoch' (did you mean train.epochs"),
    (["train.epochs=ten"], "train.epochs must be int, got 'ten'"),
    (["train.batch_size=0"], "train.batch_size must be positive"),
    (["model.name=resnet19"], "unknown model 'resnet19'"),
    (["data.name=cifar1000"], "data.name='cifar1000' is not one of"),
    (["optim.lr=-1"], "optim.lr must be positive"),
    (["run.log_every_steps=-5"], "run.log_every_steps must be 0 (a quarter of an epoch, at most 100) or positive"),
    (["data.augment.flip=maybe"], "data.augment.flip must be bool"),
    (["train.epochs"], "is not key=value"),
])
def test_bad_overrides_give_one_line_errors(override, fragment):
    with pytest.raises(ConfigError) as e:
        configlib.load_config("digits_resnet20", override)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_lists_the_valid_keys_near_it():
    with pytest.raises(ConfigError, match="valid keys here: .*train.batch_size"):
        configlib.load_config(None, ["train.batchsize=3"])


def test_unknown_preset_suggests_close_names():
    with pytest.raises(ConfigError, match="did you mean cifar100_resnet18"):
        configlib.load_config("cifar100_resnet17")


def test_yaml_file_config(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model: {name: mlp}\ndata: {name: digits}\n")
    cfg = configlib.load_config(str(path))
    assert (cfg.preset, cfg.model.name, cfg.data.name) == ("mine", "mlp", "digits")
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        configlib.load_config(str(path))


# --- inheritance: `base:` --------------------------------------------------------------------------------------------
def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_base_inherits_the_preset_and_states_only_what_differs(tmp_path):
    mine = write(tmp_path / "elu-short.yaml", "base: cifar100_elu\ntrain: {epochs: 3}\noptim: {lr: 0.05}\n")
    cfg = configlib.load_config(mine)
    expected = configlib.load_config("cifar100_elu", ["train.epochs=3", "optim.lr=0.05", "preset=elu-short"])
    assert cfg == expected
    assert (cfg.model.name, cfg.optim.step_epochs, cfg.data.normalization) == ("elu18", (70.0,), "gcn_zca")
    assert cfg.preset == "elu-short" and cfg.run_dir == "runs/elu-short"  # the run is named after the file
    assert "base" not in configlib.to_dict(cfg)


def test_base_can_be_a_yaml_path_relative_to_the_file_and_sections_merge_key_by_key(tmp_path):
    write(tmp_path / "shared" / "team.yaml", "base: cifar10_simple_cnn\ndata: {augment: {cutout: 8}}\n")
    mine = write(tmp_path / "runs" / "mine.yaml",
                 "base: ../shared/team.yaml\npreset: nightly\ndata: {augment: {flip: false}}\n")
    cfg = configlib.load_config(mine, ["train.epochs=2"])
    augment = cfg.data.augment
    assert (augment.crop_padding, augment.flip, augment.cutout) == (0, False, 8)  # preset, mine, team
    assert (cfg.model.name, cfg.optim.name, cfg.train.epochs) == ("simple_cnn", "adamw", 2)
    assert cfg.preset == "nightly"


def test_preset_key_without_base_is_refused_instead_of_training_the_defaults(tmp_path):
    old = write(tmp_path / "old.yaml", "preset: cifar100_elu\ntrain: {epochs: 3}\n")
    with pytest.raises(ConfigError, match=r"`preset: cifar100_elu` only names the run.*write `base: cifar100_elu`"):
        configlib.load_config(old)
    both = write(tmp_path / "both.yaml", "base: cifar100_elu\npreset: cifar100_elu\ntrain: {epochs: 3}\n")
    assert configlib.load_config(both).model.name == "elu18"
    named = write(tmp_path / "named.yaml", "base: cifar100_elu\npreset: elu-ablation\n")
    assert configlib.load_config(named).preset == "elu-ablation"
    with pytest.raises(ConfigError, match="only names the run, it does not load that preset; use --config cifar100_"):
        configlib.load_config("digits_resnet20", ["preset=cifar100_elu"])


def test_a_stored_run_config_loads_again_as_a_config_file(tmp_path):
    # A run's config.yaml states every key, so its `preset:` cannot hide defaults.
    cfg = configlib.load_config("cifar100_elu", ["train.epochs=7"])
    stored = write(tmp_path / "config.yaml", configlib.to_yaml(cfg))
    assert configlib.load_config(stored) == cfg


@pytest.mark.parametrize("files, fragment", [
    ({"a.yaml": "base: cifar100_elux\n"}, "unknown preset 'cifar100_elux' (the base of"),
    ({"a.yaml": "base: cifar100_elux\n"}, "did you mean cifar100_elu"),
    ({"a.yaml": "base: missing.yaml\n"}, "missing.yaml (the base of"),
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: ./a.yaml\n"}, "cycle"),
    ({"a.yaml": "base: a.yaml\n"}, "cycle"),
    ({"a.yaml": "base: [cifar100_elu]\n"}, "base must be a preset name or a YAML path"),
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "preset: cifar10_mlp\n"}, "write `base: cifar10_mlp`"),
])
def test_bad_bases_give_one_line_errors(tmp_path, files, fragment):
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(ConfigError) as e:
        configlib.load_config(str(tmp_path / "a.yaml"))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_base_is_not_an_override():
    with pytest.raises(ConfigError, match="base is a config file key; give the preset to start from as --config"):
        configlib.load_config("digits_resnet20", ["base=cifar100_elu"])


def test_unreadable_config_files_give_one_line_errors(tmp_path):
    import socket

    (tmp_path / "x.yaml").write_bytes(b"\xff\xfe")
    (tmp_path / "dir.yaml").mkdir()
    with socket.socket(socket.AF_UNIX) as sock:  # exists, is no directory, and open() fails even for root
        sock.bind(str(tmp_path / "sock.yaml"))
        for name, fragment in [("x.yaml", "is not UTF-8 text (byte 0 is 0xff); save it as UTF-8"),
                               ("dir.yaml", "is a directory; give a YAML file"),
                               ("sock.yaml", "cannot be read (")]:
            with pytest.raises(ConfigError) as e:
                configlib.load_config(str(tmp_path / name))
            assert fragment in str(e.value) and str(tmp_path / name) in str(e.value)


# --- ranges ----------------------------------------------------------------------------------------------------------
def test_every_numeric_key_has_a_range():
    numeric = set()
    for key in configlib.all_keys():
        value = configlib.Config()
        for part in key.split("."):
            value = getattr(value, part)
        if isinstance(value, (int, float, tuple)) and not isinstance(value, bool):
            numeric.add(key)
    assert numeric == set(configlib.RANGES)


@pytest.mark.parametrize("override, message", [
    ("data.augment.zoom=-3", "data.augment.zoom must be in [0, 1), got -3.0"),
    ("data.augment.zoom=1", "data.augment.zoom must be in [0, 1), got 1.0"),
    ("data.augment.rotation_degrees=181", "data.augment.rotation_degrees must be in [0, 180], got 181.0"),
    ("data.augment.crop_padding=-1", "data.augment.crop_padding must be >= 0, got -1"),
    ("data.augment.cutout=-2", "data.augment.cutout must be >= 0, got -2"),
    ("data.augment.cutout=32",
     "data.augment.cutout must be in [0, 32) (below the image side, data.image_size), got 32"),
    ("data.validation_split=1", "data.validation_split must be in [0, 1), got 1.0"),
    ("model.dropout=1", "model.dropout must be in [0, 1), got 1.0"),
    ("model.l2=-1e-4", "model.l2 must be >= 0, got -0.0001"),
    ("optim.momentum=1.5", "optim.momentum must be in [0, 1), got 1.5"),
    ("optim.weight_decay=-1", "optim.weight_decay must be >= 0, got -1.0"),
    ("optim.clip_norm=-1", "optim.clip_norm must be >= 0, got -1.0"),
    ("optim.label_smoothing=1", "optim.label_smoothing must be in [0, 1), got 1.0"),
    ("optim.warmup_epochs=-1", "optim.warmup_epochs must be >= 0, got -1.0"),
    ("optim.step_factor=0", "optim.step_factor must be in (0, 1], got 0.0"),
    ("optim.step_factor=2", "optim.step_factor must be in (0, 1], got 2.0"),
    ("optim.lr=.nan", "optim.lr must be a finite number, got nan"),
    ("optim.lr=.inf", "optim.lr must be a finite number, got inf"),
    ("optim.step_epochs=[10, 0]", "optim.step_epochs[1] must be positive, got 0.0"),
    ("train.finetune_lr_factor=0", "train.finetune_lr_factor must be positive, got 0.0"),
    ("train.seed=-1", "train.seed must be in [0, 4294967295], got -1"),
    ("train.max_steps_per_epoch=-1", "train.max_steps_per_epoch must be >= 0, got -1"),
    ("train.early_stopping_patience=-1", "train.early_stopping_patience must be >= 0, got -1"),
    ("train.eval_batch_size=0", "train.eval_batch_size must be positive, got 0"),
    ("checkpoint.upload_timeout_seconds=0", "checkpoint.upload_timeout_seconds must be positive, got 0.0"),
    ("run.summary_flush_seconds=0", "run.summary_flush_seconds must be positive, got 0.0"),
    ("distribute.collective_timeout_seconds=-5", "distribute.collective_timeout_seconds must be positive, got -5.0"),
    ("distribute.cpu_devices=-1", "distribute.cpu_devices must be >= 0, got -1"),
    ("model.input_size=16", "model.input_size must be 0 (the model's default, 224) or >= 32, got 16"),
    ("data.synthetic_examples=0", "data.synthetic_examples must be positive, got 0"),
])
def test_out_of_range_values_are_refused_naming_key_range_and_value(override, message):
    with pytest.raises(ConfigError) as e:
        configlib.load_config("digits_resnet20", [override])
    assert str(e.value) == message


def test_range_bounds_that_are_allowed():
    cfg = configlib.load_config("digits_resnet20", [
        "data.augment.zoom=0.5", "data.augment.rotation_degrees=180", "data.augment.cutout=31", "optim.step_factor=1",
        "optim.momentum=0", "train.seed=4294967295", "run.log_every_steps=0", "distribute.cpu_devices=0"])
    assert (cfg.data.augment.rotation_degrees, cfg.optim.step_factor, cfg.train.seed) == (180, 1, 2**32 - 1)


def test_step_schedule_needs_increasing_step_epochs():
    with pytest.raises(ConfigError, match=r"optim.step_epochs must be increasing, got \[80.0, 80.0\]"):
        configlib.load_config("cifar10_resnet20", ["optim.step_epochs=[80, 80]"])
    with pytest.raises(ConfigError, match="optim.schedule=step needs optim.step_epochs"):
        configlib.load_config("cifar10_resnet20", ["optim.step_epochs=[]"])


# --- the families' and datasets' rules (job/models, job/data/splits.py) ----------------------------------------------
@pytest.mark.parametrize("preset, overrides, fragment", [
    ("digits_resnet20", ["model.name=vgg16_imagenet"], "set data.normalization=none (not standardize)"),
    ("cifar100_vgg16_transfer", ["model.unfreeze_top=20"], "model.unfreeze_top must be in [0, 19] for vgg16_imagenet"),
    ("cifar100_resnet50_transfer", ["model.unfreeze_top=176"], "must be in [0, 175] for resnet50_imagenet"),
    ("digits_resnet20", ["train.finetune_epochs=3"], "train.finetune_epochs=3 only applies to transfer models"),
    ("digits_resnet20", ["model.unfreeze_top=4"], "model.unfreeze_top=4 only applies to transfer models"),
    ("digits_resnet20", ["model.weights=none"], "model.weights=none only applies to transfer models"),
    ("digits_resnet20", ["model.input_size=64"], "resnet20 is trained from scratch; remove it (default 0)"),
    ("cifar100_vgg16_transfer", ["model.name=vgg16"], "model.input_size=224 only applies to transfer models"),
    ("cifar10_resnet20", ["data.label_mode=coarse"], "data.label_mode=coarse does not apply to cifar10"),
    ("digits_resnet20", ["data.synthetic_examples=64"], "data.synthetic_examples=64 only applies to data.name=synth"),
    ("digits_resnet20", ["data.md5=" + "0" * 32], "data.md5 checks a downloaded archive, and digits has none"),
])
def test_family_and_dataset_rules_are_checked_at_load(preset, overrides, fragment):
    with pytest.raises(ConfigError) as e:
        configlib.load_config(preset, overrides)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_what_the_rules_allow():
    transfer = configlib.load_config("cifar100_vgg16_transfer", ["model.unfreeze_top=19", "model.weights=none"])
    assert transfer.model.unfreeze_top == 19
    assert configlib.load_config("cifar100_resnet18", ["data.label_mode=coarse"]).data.label_mode == "coarse"
    synthetic = configlib.load_config("cifar10_resnet20", ["data.name=synthetic", "data.synthetic_examples=64"])
    assert synthetic.data.synthetic_examples == 64


def test_calibration_images_must_be_positive():
    # export.calibration_images: the int8 LiteRT export's calibration set (job/litert.py; docs/serving.md)
    with pytest.raises(ConfigError, match=r"^export.calibration_images must be positive, got 0$"):
        configlib.load_config("digits_resnet20", ["export.calibration_images=0"])
    assert configlib.load_config("digits_resnet20").export.litert is True  # on for users; the suite turns it off
