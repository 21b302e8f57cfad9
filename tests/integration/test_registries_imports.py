"""The registries (datasets, backends, models) cost no TensorFlow import: every preset loads and a config prints in a
fresh process that never imports it (the registries themselves: tests/unit/test_registries.py)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_loading_every_preset_and_printing_a_config_imports_no_tensorflow():
    # Config validation runs the registries' rules: `python -m job config` must refuse a bad config before
    # TensorFlow (seconds) is imported.
    code = (
        "import sys\n"
        "from job import config\n"
        "from job.cli import main\n"
        "for name in config.list_presets():\n"
        "    config.load_config(name)\n"
        "assert main(['config', '--config', 'cifar100_vgg16_transfer']) == 0\n"
        "assert main(['config', '--config', 'digits_resnet20', 'model.name=vgg16_imagenet']) == 2\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'sklearn', 'horovod'})\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
