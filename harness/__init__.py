"""unitchaos: break a systemd unit chain's disk in a local VM and see what systemd, the
kernel and the health check do."""
from .errors import GuestTimeout, UserError
from .lab.instance import Instance
from .lab.lab import Lab
from .machines.machine import Machine

__all__ = ["GuestTimeout", "Instance", "Lab", "Machine", "UserError"]
