"""The heaviest models of the zoo build and take one real train step, as every other model does in
tests/unit/test_models.py: seconds per traced step each on 2 CPU cores, so out of `make test-fast`."""
import pytest

from tests.unit.test_models import HEAVY, builds_and_takes_a_train_step


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HEAVY))
def test_model_builds_and_takes_a_train_step(name):
    builds_and_takes_a_train_step(name)
