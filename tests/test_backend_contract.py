"""The backend contract: a backend states its Capabilities and overrides only the hooks
Machine declares (Machine.HOOKS); the rest of the harness never asks which class it has."""
import inspect

import pytest

from harness.machines.fcos_machine import FcosMachine
from harness.machines.machine import Capabilities, Machine
from harness.machines.vagrant_machine import VagrantMachine


@pytest.mark.parametrize("backend", [VagrantMachine, FcosMachine])
def test_a_backend_overrides_only_the_declared_hooks(backend):
    overridden = {name for name, value in vars(backend).items()
                  if callable(value) or isinstance(value, property)} & set(dir(Machine))
    assert overridden <= set(Machine.HOOKS), f"{backend.__name__} overrides undeclared {overridden - set(Machine.HOOKS)}"


def test_every_declared_hook_exists_and_says_what_it_is_for():
    for name in Machine.HOOKS:
        assert inspect.getdoc(getattr(Machine, name)), f"hook Machine.{name} has no docstring"
        assert f"`{name}" in Machine.__doc__, f"hook Machine.{name} is not listed in Machine's docstring"


@pytest.mark.parametrize("backend", [Machine, VagrantMachine, FcosMachine])
def test_a_backend_states_its_capabilities(backend):
    assert isinstance(backend.CAPABILITIES, Capabilities)
    # No class flags beside it: what a backend can do is said in one place.
    assert not {"names_volume_nodes", "reboots_after_panic"} & set(vars(backend))


def test_only_the_harness_qemu_restores_snapshots_and_names_volume_nodes():
    assert Machine.CAPABILITIES.warm_snapshots and Machine.CAPABILITIES.named_volume_nodes
    assert not VagrantMachine.CAPABILITIES.warm_snapshots and not VagrantMachine.CAPABILITIES.named_volume_nodes
    assert not FcosMachine.CAPABILITIES.warm_snapshots and FcosMachine.CAPABILITIES.ssh_user == "core"


def test_a_warm_start_on_a_cold_only_backend_is_one_user_error(tmp_path):
    from harness.errors import UserError
    from harness.images.image import Image
    machine = VagrantMachine(Image(tmp_path / "image"), tmp_path / "run")
    with pytest.raises(UserError, match="warm snapshots do not apply to the Vagrant backend"):
        machine.start(restore=object())
