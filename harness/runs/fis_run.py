"""`unitchaos fis run`: carries an FIS template's plan (fis.py) out on a lab instance, as
one experiment (runs/experiments.py watches the checks, observes and writes the outcome).

Actions run as FIS runs them: those without startAfter at once, in parallel; each other
one when every action it names has completed. Each action's state goes pending ->
initiating -> running -> completed (or failed, or cancelled when another one failed).
Every fault an action injected is healed before the experiment ends, whatever happens.
"""
import secrets
import threading
import time
from pathlib import Path

from ..chaos import fis
from ..errors import UnitchaosError, UserError
from ..lab.lab import Lab
from . import experiments
from ..waiting import wait_until


class Experiment:
    """One run of a plan over INSTANCES (instance id -> Instance)."""

    def __init__(self, plan: fis.Plan, instances: dict, on_state=None):
        self.plan = plan
        self.instances = instances
        self.on_state = on_state or (lambda action, state, reason: None)
        self.states = {action.name: fis.PENDING for action in plan.actions}
        self.log: list[dict] = []
        self.reasons: dict[str, str] = {}
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self.started = time.time()
        for action in plan.actions:
            self._set(action.name, fis.PENDING)

    def _set(self, name: str, state: str, reason: str = "") -> None:
        with self._lock:
            self.states[name] = state
            if reason:
                self.reasons[name] = reason
            self.log.append({"action": name, "state": state, "t": round(time.time() - self.started, 2),
                             **({"reason": reason} if reason else {})})
        self.on_state(name, state, reason)

    def run(self, on_injected=None) -> dict:
        """Runs every action; returns the record that goes into the outcome."""
        self.on_injected = on_injected or (lambda at: None)
        self._injected = False
        threads: dict[str, threading.Thread] = {}
        try:
            while True:
                with self._lock:
                    states = dict(self.states)
                for action in self.plan.actions:
                    if action.name in threads or states[action.name] != fis.PENDING:
                        continue
                    if self.cancel.is_set():
                        self._set(action.name, fis.CANCELLED, "the experiment failed")
                    elif all(states[before] == fis.COMPLETED for before in action.start_after):
                        threads[action.name] = threading.Thread(target=self._run_action, args=(action,), daemon=True)
                        threads[action.name].start()
                    elif any(states[before] in (fis.FAILED, fis.CANCELLED) for before in action.start_after):
                        self._set(action.name, fis.CANCELLED, "an action it starts after did not complete")
                if all(state in (fis.COMPLETED, fis.FAILED, fis.CANCELLED) for state in self.states.values()):
                    break
                time.sleep(0.1)
        except BaseException:
            self.cancel.set()  # Ctrl-C: every running action heals what it did, then ends
            for thread in threads.values():
                thread.join(timeout=120)
            raise
        failed = any(state == fis.FAILED for state in self.states.values())
        return {"description": self.plan.description, "state": fis.FAILED if failed else fis.COMPLETED,
                "actions": {a.name: {"actionId": a.action_id, "state": self.states[a.name],
                                     **({"reason": self.reasons[a.name]} if a.name in self.reasons else {}),
                                     "fault": a.step.fault, "params": a.step.params, "seconds": a.step.seconds,
                                     "targets": [r["id"] for r in a.resources],
                                     **({"lab_differs": a.step.note} if a.step.note else {})}
                            for a in self.plan.actions},
                "log": self.log}

    def _run_action(self, action: fis.Action) -> None:
        step = action.step
        done: list = []
        try:
            self._set(action.name, fis.INITIATING)
            machines = list(dict.fromkeys(r["instance"] for r in action.resources))
            for iid in machines:
                self._begin(step, self.instances[iid])
                done.append(iid)
            self._set(action.name, fis.RUNNING)
            self.cancel.wait(step.seconds)
            for iid in reversed(done):
                self._end(step, self.instances[iid])
            done.clear()
            if self.cancel.is_set():
                self._set(action.name, fis.CANCELLED, "another action failed")
            else:
                self._set(action.name, fis.COMPLETED)
        except Exception as exc:  # noqa: BLE001 - an action that fails fails the experiment, as in FIS
            self.cancel.set()
            for iid in reversed(done):
                try:
                    self._end(step, self.instances[iid])
                except Exception:  # noqa: BLE001 - the instance is torn down anyway
                    pass
            said = exc.problem if isinstance(exc, UserError) else str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._set(action.name, fis.FAILED, said)

    def _begin(self, step: fis.Step, instance) -> None:
        if step.fault is None:
            return
        if not self._injected:
            self._injected = True
            self.on_injected(time.time())
        if step.fault == "stop":
            instance.machine.monitor.command("stop")  # vCPUs halt, memory and disks stay
        elif step.fault == "reboot":
            instance.machine.monitor.command("system_reset")
            instance.wait_for_deep_health()  # FIS's reboot completes when the instance is back
        else:
            instance.inject(step.fault, **step.params)

    def _end(self, step: fis.Step, instance) -> None:
        if step.fault == "stop":
            instance.machine.monitor.command("cont")
            instance.machine.channel.set_clock(time.time())
        elif step.fault and step.heal:
            instance.heal(step.fault)


def lab_plan(path: Path, group: str, instance_ids: list[str]) -> fis.Plan:
    """The template's plan against GROUP's instances (all checks before any VM starts)."""
    template = fis.load(path)
    return fis.plan(template, fis.lab_resources(group, instance_ids), where=str(path))


def run(lab: Lab, path: Path, group: str = "lab", on_state=None, recovery_timeout: float = 60.0):
    """Runs the template at PATH on one fresh instance of GROUP. Returns its Outcome, whose
    fault_detail holds the FIS experiment (state, each action's state and log) and how
    long the deep check took to answer 200 again once the last action ended."""
    iid = f"i-{secrets.token_hex(8)}"
    plan = lab_plan(path, group, [iid])
    name = f"fis:{Path(path).stem}"

    def act(instance, on_injected) -> dict:
        experiment = Experiment(plan, {iid: instance}, on_state)
        record = {"template": str(path), "group": group, "instance_id": iid, **experiment.run(on_injected)}
        ended = time.monotonic()
        if instance.machine.running:
            # Recovered: the deep check (its I/O probe writes, fsyncs and reads the volume)
            # answers 200 again. Not polled with container starts: on this 2-core TCG host at
            # load 5-6 those time out even with no fault (a control run, 2026-12-01), and
            # polling them made Docker slower still.
            try:
                wait_until(lambda: instance.deep_health()[0] == 200, recovery_timeout, "the deep check to answer 200",
                           interval=1.0)
                record["deep_200_after_s"] = round(time.monotonic() - ended, 1)
            except UnitchaosError:
                record["deep_200_after_s"] = None  # not back: the outcome's checks say what it answers
        return record

    return experiments.run(lab, name, act=act)



def check(template: Path, group: str) -> str:
    """Every problem of the template and of --group GROUP, before the lab starts anything;
    returns the group's name."""
    name, _, size = group.partition(":")
    if not name or (size and size != "1"):
        raise UserError(f"--group {group!r}: the lab runs an FIS template on a group of one instance",
                        "give --group NAME (or NAME:1)")
    lab_plan(template, name, ["i-0123456789abcdef0"])
    return name
