"""unitchaos: break a systemd unit chain's disk in a local VM and see what systemd, the
kernel and the health check do."""
from .errors import GuestError, GuestTimeout, UnitchaosError, UserError
from .lab.instance import Instance
from .units import ALL_ACTIVE
from .lab.lab import Lab
from .machines.machine import Machine

__all__ = ["ALL_ACTIVE", "GuestError", "GuestTimeout", "Instance", "Lab", "Machine", "UnitchaosError", "UserError"]
