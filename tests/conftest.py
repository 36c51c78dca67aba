import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests use tiny tensors, where a second torch thread only adds contention on a 2-core machine; and the
    subprocesses that tests start (each pinned with run.threads=1) then get a core of their own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_addoption(parser):
    parser.addoption(
        "--precision",
        choices=("auto", "float32", "bf16"),
        default="auto",
        help="run.precision of every `wm` command the end-to-end tests start (tests/experiments/run_wm.py's DEBUG); "
        "CI runs them in float32 (what 'auto' picks on every CPU) and again in bf16",
    )


def pytest_configure(config):
    # An environment variable, so that pytest-xdist's workers and the helpers they import see it too.
    os.environ["WM_TEST_PRECISION"] = config.getoption("--precision")
