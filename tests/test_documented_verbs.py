"""Every public verb of Machine, Instance and Lab, and every fault, says in one line what it
does: a verb added without its contract fails here, before review."""
import inspect

import pytest

from harness import faults
from harness.lab.instance import Instance
from harness.lab.lab import Lab
from harness.machines.fcos_machine import FcosMachine
from harness.machines.machine import Machine
from harness.machines.vagrant_machine import VagrantMachine


def public_verbs(cls) -> list[tuple[str, object]]:
    """(name, function or property) for every public method and property of CLS, inherited too."""
    verbs = []
    for name in dir(cls):
        if name.startswith("_"):
            continue
        member = inspect.getattr_static(cls, name)
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if isinstance(member, property) or inspect.isfunction(member):
            verbs.append((name, member))
    return verbs


@pytest.mark.parametrize("cls", [Machine, Instance, Lab, VagrantMachine, FcosMachine])
def test_every_public_verb_has_a_one_line_contract(cls):
    undocumented = [name for name, member in public_verbs(cls) if not (inspect.getdoc(member) or "").strip()]
    assert not undocumented, f"{cls.__name__} verbs without a docstring: {', '.join(undocumented)}"
    assert inspect.getdoc(cls), f"{cls.__name__} has no docstring"


def test_the_walk_finds_the_verbs_scenarios_use():
    names = {name for name, _ in public_verbs(Machine)} | {name for name, _ in public_verbs(Instance)}
    assert {"succeed", "fail", "wait_for_unit", "host", "inject", "wait_for_kernel_message", "unit_states"} <= names
    assert {"acquire", "release"} <= {name for name, _ in public_verbs(Lab)}


@pytest.mark.parametrize("name", list(faults.FAULTS))
def test_every_fault_says_what_it_does_in_one_line(name):
    fault = faults.get(name)
    assert fault.summary.strip() and "\n" not in fault.summary, f"{name}: its summary is its contract"
    assert fault.where in ("qemu", "guest")
    for verb in (fault.inject, fault.heal, fault.parse_params):
        assert inspect.getdoc(verb), f"Fault.{verb.__name__} has no docstring"
