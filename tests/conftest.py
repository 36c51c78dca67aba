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
