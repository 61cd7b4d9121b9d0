"""Suite-wide settings."""

import os

import torch

# A bug in the probes is raised where it happens instead of being contained (probes/session.py,
# Session._internal_error): the suite must see every internal error, users must not be stopped by one.
os.environ["PROBES_STRICT"] = "1"

# The models under test are tiny: one intra-op thread is as fast as two, and it keeps OpenMP
# from spin-waiting for a core when the 2-core CI machine is busy (seen: 1000x slowdowns).
torch.set_num_threads(1)

# The PyPI torchvision wheel (a dev extra, for the calibration corpus) cannot load its compiled ops
# beside the CPU torch, and transformers imports torchvision when it is installed: declare the two
# op schemas it needs first, for every test (tests/calibration.py says why this is enough).
from calibration import declare_torchvision_ops  # noqa: E402

declare_torchvision_ops()


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/* from the current renderers instead of comparing",
    )
