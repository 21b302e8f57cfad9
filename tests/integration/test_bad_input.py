"""Every bad input: one line on stderr naming the problem and the fix, a non-zero exit, nothing written or deleted.
Problems a training start can detect (config, data, storage) are reported before TensorFlow is imported, so that line
is all the terminal shows, with TensorFlow's log level as a user has it (docs/runs.md "Commands", job/preflight.py)."""
import gzip
import hashlib
import io
import os
import tarfile

import pytest

from tests.support.trainer_runs import run_job, user_env

TINY = ["train.epochs=1", "train.batch_size=16", "train.max_steps_per_epoch=2"]


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def assert_only_line(result, *fragments):
    """The error is all there is: no TensorFlow start-up lines, no log lines, nothing on stdout."""
    error = assert_one_line_error(result, *fragments)
    assert [line for line in result.stderr.splitlines() if line.strip()] == [error], result.stderr[-2000:]
    assert not result.stdout.strip(), result.stdout[-2000:]
    return error


def run_start(*args, timeout=120):
    return run_job(*args, timeout=timeout, env=user_env())


@pytest.mark.parametrize("args, fragments", [
    (["--config", "digits_resnet20", "train.epoch=3"], ["unknown config key 'train.epoch'", "train.epochs"]),
    (["--config", "digits_resnet20", "train.batch_size=big"], ["train.batch_size must be int, got 'big'"]),
    (["--config", "digits_resnet20", "model.name=resnet1000"], ["unknown model 'resnet1000'", "resnet110"]),
    (["--config", "digits_resnet20", "data.name=mnist"], ["data.name='mnist' is not one of"]),
    (["--config", "cifar100_resnet1"], ["unknown preset 'cifar100_resnet1'", "python -m job presets"]),
])
def test_bad_config_input(tmp_path, args, fragments):
    result = run_start("train", *args, f"run.dir={tmp_path / 'run'}")
    assert_only_line(result, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, fragments", [
    (b"\xff\xfe", ["is not UTF-8 text", "save it as UTF-8"]),
    (b"preset: cifar100_elu\ntrain: {epochs: 3}\n", ["`preset: cifar100_elu` only names the run",
                                                      "`base: cifar100_elu`"]),
    (b"base: cifar100_elux\n", ["unknown preset 'cifar100_elux'", "did you mean cifar100_elu"]),
    (b"base: digits_resnet20\ndata: {augment: {zoom: -3}}\n", ["data.augment.zoom must be in [0, 1), got -3"]),
    (b"base: digits_resnet20\nmodel: {name: resnet50_imagenet}\n", ["data.normalization=none"]),
])
def test_bad_config_file(tmp_path, content, fragments):
    path = tmp_path / "mine.yaml"
    path.write_bytes(content)
    for command in ("config", "train"):
        result = run_start(command, "--config", str(path), f"run.dir={tmp_path / 'run'}")
        assert_only_line(result, *fragments)
    assert not (tmp_path / "run").exists()


def test_config_path_that_is_a_directory(tmp_path):
    result = run_start("config", "--config", str(tmp_path))
    assert_only_line(result, str(tmp_path), "is a directory")


def test_missing_archive_without_download(tmp_path):
    result = run_start("train", "--config", "cifar100_resnet18", f"data.dir={tmp_path / 'data'}", "data.download=false",
                       f"run.dir={tmp_path / 'run'}", *TINY)
    assert_only_line(result, "cifar-100-python.tar.gz")
    assert not (tmp_path / "run").exists()


def rewrite_member(archive, name, content):
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    with tarfile.open(archive, "w:gz") as tar:
        for member, blob in members:
            if member.name == name:
                blob, member.size = content, len(content)
            tar.addfile(member, io.BytesIO(blob) if blob is not None else None)


@pytest.mark.parametrize("damage", ["md5", "truncated", "not_a_tar", "not_a_pickle"])
def test_corrupted_archive(tmp_path, damage):
    from tests.support.cifar_archives import write_cifar100_archive

    data = tmp_path / "data"
    md5 = write_cifar100_archive(data, n_train=40, n_test=20)
    archive = data / "cifar-100-python.tar.gz"
    if damage == "truncated":
        archive.write_bytes(archive.read_bytes()[:3000])
    elif damage == "not_a_tar":
        archive.write_bytes(gzip.compress(b"this is not a tar archive"))
    elif damage == "not_a_pickle":
        rewrite_member(archive, "cifar-100-python/train", b"not a pickle at all")
    before = archive.read_bytes()
    # The MD5 given matches the damaged file, so the check after it (tar, pickle) is what must catch the damage.
    md5 = "0123456789abcdef0123456789abcdef" if damage == "md5" else hashlib.md5(before).hexdigest()
    args = [f"data.md5={md5}"]
    result = run_start("train", "--config", "cifar100_resnet18", f"data.dir={data}", "data.download=false",
                       f"run.dir={tmp_path / 'run'}", *args, *TINY)
    assert_only_line(result, "cifar-100-python.tar.gz")
    assert archive.read_bytes() == before, "a bad archive is reported, never deleted or rewritten"
    assert not (tmp_path / "run").exists()


def test_batch_not_divisible_by_replicas(tmp_path):
    result = run_job("train", "--config", "digits_resnet20", "distribute.backend=mirrored",
                     "distribute.cpu_devices=2", "train.batch_size=33", f"run.dir={tmp_path / 'run'}", timeout=120)
    assert_one_line_error(result, "train.batch_size=33 is not divisible by the 2 replicas", "multiple of 2")
    assert not (tmp_path / "run").exists()


def test_run_dir_not_writable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the run dir's parent should be")
    result = run_start("train", "--config", "digits_resnet20", f"run.dir={blocker / 'run'}", *TINY)
    assert_only_line(result, str(blocker / "run"))
    assert blocker.read_text().startswith("a file")


@pytest.mark.slow
@pytest.mark.timeout(600)  # two trainer runs
def test_resuming_with_a_changed_model_is_refused_and_keeps_the_run(tmp_path):
    run = tmp_path / "run"
    first = run_job("train", "--config", "digits_resnet20", "model.name=mlp", f"run.dir={run}", *TINY, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    before = sorted((p.relative_to(run), p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*"))

    changed = run_start("train", "--config", "digits_resnet20", "model.name=simple_cnn", f"run.dir={run}", *TINY)
    assert_only_line(changed, "model.name='mlp'", "model.name='simple_cnn'", "run.dir")
    after = sorted((p.relative_to(run), p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*"))
    assert after == before

    extended = run_job("train", "--config", "digits_resnet20", "model.name=mlp", f"run.dir={run}",
                       "train.epochs=2", "train.batch_size=16", "train.max_steps_per_epoch=2", timeout=300)
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert "resuming from step 2" in extended.stderr


def test_cli_presets_lists_every_preset():
    result = run_job("presets", timeout=60)
    assert result.returncode == 0
    assert "digits_resnet20" in result.stdout and "cifar100_elu" in result.stdout
    assert len(result.stdout.splitlines()) >= 12


def test_console_script_is_installed():
    bin_dir = os.path.dirname(os.sys.executable)
    assert os.path.exists(os.path.join(bin_dir, "job")), "setup.py installs the `job` console script"
