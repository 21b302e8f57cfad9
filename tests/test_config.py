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
