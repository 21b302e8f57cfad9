"""The model zoo in fresh processes: importing the registry imports no TensorFlow, saved models with custom layers
load, and ImageNet weights without a network say which file to place where (the models themselves:
tests/unit/test_models.py)."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from job.models import build_model  # noqa: E402
from tests.unit.test_models import NUM_CLASSES, batch, model_config

REPO = Path(__file__).resolve().parents[2]


# ---- every model -------------------------------------------------------------------------------------------------


def test_importing_the_registry_does_not_import_tensorflow():
    # job.config's validate() reads MODELS: checking a config must not pay for a TensorFlow import
    code = "import sys, job.models; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


# ---- saving -------------------------------------------------------------------------------------------------------


def test_a_fresh_process_loads_saved_models_with_custom_layers(tmp_path):
    """The builders import families lazily, so a process that only loads (evaluate, predict) must still find the
    custom layers: job.models.load_model registers them."""
    for name in ("resnet20", "vgg16_imagenet"):  # ZeroPadShortcut, ImagenetPreprocess
        model = build_model(model_config(name), NUM_CLASSES)
        x, _ = batch(name)
        model.save(tmp_path / f"{name}.keras")
        np.savez(tmp_path / f"{name}.npz", x=x, logits=model(x, training=False).numpy())
    code = (
        "import sys, numpy as np\n"
        "from job.models import load_model\n"
        "for name in ('resnet20', 'vgg16_imagenet'):\n"
        "    data = np.load(f'{sys.argv[1]}/{name}.npz')\n"
        "    logits = load_model(f'{sys.argv[1]}/{name}.keras')(data['x'], training=False).numpy()\n"
        "    np.testing.assert_array_equal(logits, data['logits'])\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# ---- transfer models ----------------------------------------------------------------------------------------------


def test_imagenet_weights_without_network_say_which_file_to_place_where(tmp_path):
    """A real download attempt through a proxy port nobody listens on: no network is needed or used."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "https_proxy", "http_proxy")}
    env.update(KERAS_HOME=str(tmp_path / "keras"), https_proxy=f"http://127.0.0.1:{dead_port}",
               TF_CPP_MIN_LOG_LEVEL="2")
    code = (
        "from job.config import ModelConfig\n"
        "from job.errors import UserError\n"
        "from job.models import build_model\n"
        "try:\n"
        "    build_model(ModelConfig(name='vgg16_imagenet', weights='imagenet', input_size=32), 7)\n"
        "except UserError as e:\n"
        "    print('USER_ERROR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120).stdout
    message = next(line for line in out.splitlines() if line.startswith("USER_ERROR"))
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "keras" / "models") in message
    assert "model.weights=PATH" in message
