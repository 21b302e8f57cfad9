import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests measure CPU behaviour, also on a GPU machine

ROOT = Path(__file__).resolve().parent.parent

# fake-gcs-server fixtures (gcs_server, gcs_bucket, gcs_outage_server); digits_run, a trained run (trained once);
# a real PostgreSQL (postgres_server, session; postgres_database, a fresh database per test); skip_guard: a skip not in
# tests/allowed_skips.txt fails `make test`; pytester: the tests of these plugins
# (tests/integration/test_suite_guards.py)
pytest_plugins = ["tests.support.gcs_server", "tests.support.trained_model", "tests.support.postgres_server",
                  "tests.support.skip_guard", "pytester"]
