"""The FIS template a team would run against AWS, run on the lab: aws:ebs:pause-volume-io
on the group's data volume for 20 s (examples/fis/pause-volume-io.json). The stock check
answers 200 through the stall, the deep check calls the instance unhealthy, and once the
pause ends the queue drains and the deep check (its probe writes, fsyncs and reads the
volume) answers 200 again."""
from harness.runs import fis_run
from harness.paths import REPO


def test_pause_volume_io_template_the_stock_check_lies_the_deep_one_fails_then_it_recovers(lab):
    states = []
    outcome = fis_run.run(lab, REPO / "examples/fis/pause-volume-io.json", "ecs",
                          on_state=lambda action, state, reason: states.append((action, state)))
    experiment = outcome.fault_detail
    assert [state for _, state in states] == ["pending", "initiating", "running", "completed"]
    assert experiment["state"] == "completed" and experiment["actions"]["PauseDataVolume"]["seconds"] == 20
    stock, deep = outcome.health.stock, outcome.health.deep
    assert not stock.detected, "the stock check noticed a stall it cannot see"
    assert deep.detected and deep.lb_seconds < 20, "the deep check must call it unhealthy during the pause"
    assert outcome.kernel_events == []  # a stall is not an error: the kernel says nothing
    assert experiment["deep_200_after_s"] is not None, "the deep check did not answer 200 again"
    print(f"deep check failed after {deep.seconds} s, unhealthy after {deep.lb_seconds} s; stock: "
          f"{stock.samples} answers, never unhealthy; after the pause: deep 200 again in "
          f"{experiment['deep_200_after_s']} s; "
          f"at the end the workload {'works' if outcome.workload_ok else 'fails: ' + str(outcome.workload)}; "
          f"{outcome.kernel}, {outcome.systemd}")
