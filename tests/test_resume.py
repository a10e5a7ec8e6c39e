"""README 'Resume': the same command on the same workdir resumes, on both data paths, and ends as
an uninterrupted run would; SIGTERM saves first. Every run here is `python -m bcjax.main`, as a user
starts it, on 2 devices."""

import json
import signal

import numpy as np
import pytest
import trainer_runs as tr

pytestmark = pytest.mark.slow

# Checkpoints at 3, 6, 9, 12 and validation at 6 and 12; 80x80 images make each step long enough
# to interrupt the run between its checkpoints.
OVERRIDES = [
    "--config.total_steps=12",
    "--config.checkpoint_every_steps=3",
    "--config.eval_every_steps=6",
    "--config.data.height=80",
    "--config.data.width=80",
]
PATHS = pytest.mark.parametrize("resident", [True, False], ids=["device_resident", "host_iterator"])


def _overrides(resident: bool) -> list[str]:
    """The device-resident path (batches drawn from the step number) or the host path (grain's iterator)."""
    return [*OVERRIDES, f"--config.data.device_resident={resident}"]


@pytest.fixture(scope="module")
def uninterrupted(prepared_data_dir, tmp_path_factory):
    """`uninterrupted(resident)`: the workdir of the run never stopped, on that data path (run once)."""
    workdirs = {}

    def run(resident: bool):
        if resident not in workdirs:
            workdir = tmp_path_factory.mktemp("uninterrupted")
            code, output = tr.main(workdir, prepared_data_dir, *_overrides(resident), devices=2)
            assert code == 0, output[-3000:]
            workdirs[resident] = workdir
        return workdirs[resident]

    return run


def _assert_ends_like(resumed, uninterrupted, resident: bool):
    """Same data path, same metrics at every step, same report, same final state, bit for bit."""
    for workdir in (resumed, uninterrupted):
        assert json.loads((workdir / "data_path.json").read_text())["device_resident"] is resident
    assert tr.report(resumed) == tr.report(uninterrupted)
    a, b = tr.records(uninterrupted), tr.records(resumed)
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, 13))
    for x, y in zip(a, b):
        for key in ("train/loss", "train/accuracy", "train/grad_norm", "validation/loss", "validation/roc_auc"):
            assert x.get(key) == y.get(key), (x["step"], key)
    final = [tr.leaves_by_path(tr.saved_state(workdir, 12)) for workdir in (uninterrupted, resumed)]
    assert final[0].keys() == final[1].keys()
    for name in final[0]:
        np.testing.assert_array_equal(final[1][name], final[0][name], err_msg=name)


@PATHS
def test_kill_9_then_the_same_command_ends_with_the_uninterrupted_metrics(
    resident, uninterrupted, prepared_data_dir, tmp_path
):
    """README 'Resume': a run killed with `kill -9` and restarted ends with exactly the metrics of an
    uninterrupted run, on both data paths: the host path restores grain's iterator from the
    checkpoint, the device-resident path draws its batches from the restored step."""
    straight = uninterrupted(resident)
    process = tr.main(tmp_path, prepared_data_dir, *_overrides(resident), devices=2, wait=False)
    tr.wait_for(lambda: (tmp_path / "checkpoints" / "3" / "commit_success.txt").exists(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "eval").exists(), "the run finished before it could be killed"
    assert tr.saved_steps(tmp_path)[-1] < 12
    code, output = tr.main(tmp_path, prepared_data_dir, *_overrides(resident), devices=2)
    assert code == 0, output[-3000:]
    assert "Resumed from step" in output
    _assert_ends_like(tmp_path, straight, resident)


def test_sigterm_saves_then_the_same_command_ends_with_the_uninterrupted_results(
    uninterrupted, prepared_data_dir, tmp_path
):
    """README 'Resume': SIGTERM saves a checkpoint (with grain's iterator, on the host path) and
    exits cleanly; the same command resumes from that step and ends as the uninterrupted run."""
    straight = uninterrupted(False)
    process = tr.main(tmp_path, prepared_data_dir, *_overrides(False), devices=2, wait=False)
    tr.wait_for(lambda: (tmp_path / "metrics.jsonl").exists() and tr.records(tmp_path), process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    assert "SIGTERM: saved step" in output and "Traceback" not in output
    step = int(output.split("SIGTERM: saved step ")[1].split(";")[0])
    assert step < 12 and (tmp_path / "checkpoints" / str(step) / "commit_success.txt").exists()
    assert not (tmp_path / "eval").exists()
    code, output = tr.main(tmp_path, prepared_data_dir, *_overrides(False), devices=2)
    assert code == 0, output[-3000:]
    assert f"Resumed from step {step} " in output
    _assert_ends_like(tmp_path, straight, False)
