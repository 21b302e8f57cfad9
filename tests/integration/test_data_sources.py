"""Where archives come from: a download from a real HTTP server on 127.0.0.1 (verified, renamed, or a failure that
says where to put the file) and an archive in a bucket on fake-gcs-server, cached locally."""
from __future__ import annotations

import dataclasses
import functools
import http.server
import os
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from job.config import DataConfig  # noqa: E402
from job.data import archive as archive_module  # noqa: E402
from job.data import (  # noqa: E402
    load_splits,
)
from job.errors import DataError  # noqa: E402
from tests.support.cifar_archives import (  # noqa: E402
    write_cifar10_archive,
    write_cifar100_archive,
)
from tests.unit.test_data import assert_one_line, cifar_cfg


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/served, standing in for www.cs.toronto.edu."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_and_renames(tmp_path, http_server, monkeypatch):
    served, url = http_server
    md5 = write_cifar10_archive(served, n_train=20, n_test=10)
    spec = archive_module.ARCHIVES["cifar10"]
    monkeypatch.setitem(archive_module.ARCHIVES, "cifar10",
                        dataclasses.replace(spec, url=f"{url}/{spec.filename}", md5=md5))
    data = tmp_path / "data"
    splits = load_splits(DataConfig(name="cifar10", dir=str(data), download=True), seed=0)
    assert splits.x_train.shape == (20, 32, 32, 3)
    assert sorted(p.name for p in data.iterdir()) == ["cifar-10-python.tar.gz"]  # no temp file left behind

    # a download whose MD5 is wrong (here: the expected one is) never appears under the archive's name
    other = tmp_path / "other"
    with pytest.raises(DataError) as err:
        load_splits(DataConfig(name="cifar10", dir=str(other), download=True, md5="0" * 32), seed=0)
    assert_one_line(err, "MD5", md5)
    assert list(other.iterdir()) == []


def test_download_failure_says_where_to_put_the_file(tmp_path, http_server, monkeypatch):
    _, url = http_server  # serves nothing: 404
    spec = archive_module.ARCHIVES["cifar100"]
    monkeypatch.setitem(archive_module.ARCHIVES, "cifar100", dataclasses.replace(spec, url=f"{url}/{spec.filename}"))
    data = tmp_path / "data"
    with pytest.raises(DataError) as err:
        load_splits(DataConfig(name="cifar100", dir=str(data), download=True), seed=0)
    assert_one_line(err, "could not download", str(data / "cifar-100-python.tar.gz"), "HTTP 404")
    assert list(data.iterdir()) == []


def test_archive_in_a_bucket_is_cached_locally(tmp_path, gcs_bucket):
    from job.storage import open_storage

    md5 = write_cifar100_archive(tmp_path, n_train=100, n_test=20, seed=7)
    open_storage(gcs_bucket + "/datasets").put_file(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python.tar.gz")
    cfg = DataConfig(name="cifar100", dir=gcs_bucket + "/datasets", download=False, md5=md5)
    first = load_splits(cfg, seed=0)
    local = load_splits(cifar_cfg(tmp_path, "cifar100", md5=md5), seed=0)
    np.testing.assert_array_equal(first.x_train, local.x_train)
    with pytest.raises(DataError) as err:
        load_splits(dataclasses.replace(cfg, dir=gcs_bucket + "/empty"), seed=0)
    assert_one_line(err, f"{gcs_bucket}/empty/cifar-100-python.tar.gz", "data.download")
