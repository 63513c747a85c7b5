"""The device kit: carry the wheels `make gpu-check` needs to an offline GPU machine."""

from .wheels import *  # noqa: F403
from .wheels import main  # noqa: F401
