"""A bare `make` lists the documented targets instead of running one (the first target used to be a 200-epoch
training)."""
import re
import subprocess

from tests.support.trainer_runs import ROOT


def test_bare_make_prints_the_documented_targets_and_runs_nothing():
    result = subprocess.run(["make", "--no-print-directory"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^  make (\S+)\s+\S", result.stdout, flags=re.M)
    for target in ("train", "test", "test-fast", "lint", "bench", "rehearse", "train-local-2"):
        assert target in listed, result.stdout
    # nothing ran: make echoes every recipe line it runs, and the output is the listing alone
    assert all(line.startswith("  make ") for line in result.stdout.splitlines()), result.stdout
    # every listed target is a real one
    dry = subprocess.run(["make", "--no-print-directory", "-n", *listed], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert dry.returncode == 0 and "No rule to make target" not in dry.stderr, dry.stderr
