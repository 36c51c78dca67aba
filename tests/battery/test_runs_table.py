"""`wm runs` prints its table whatever one run's summary.json holds: a summary that is valid JSON but not an object,
or whose fields have the wrong types, is a row marked malformed that names what is wrong."""

import json

import pytest
from battery_helpers import wm

from experiments.runs import format_table, read_runs

GOOD = {
    "command": "evolve",
    "status": "done",
    "env": {"env_id": "CartPole-v1"},
    "generations": 30,
    "real_env_steps": 10547,
    "eval_return_mean": 85.8,
    "eval_return_std": 51.6,
    "wall_seconds": 115,
}

# (summary.json text, what the row must name)
MALFORMED = {
    "array": ("[1, 2]", "holds an array, not an object"),
    "string": ('"done"', "holds a string, not an object"),
    "null": ("null", "holds null, not an object"),
    "wall-text": (json.dumps({**GOOD, "wall_seconds": "abc"}), "wall_seconds is 'abc', not a number"),
    "env-text": (json.dumps({**GOOD, "env": "CartPole-v1"}), "env is 'CartPole-v1', not an object"),
    "return-text": (json.dumps({**GOOD, "eval_return_mean": "85"}), "eval_return_mean is '85', not a number"),
    "probe-list": (json.dumps({**GOOD, "probe": [0.5]}), "probe is [0.5], not an object"),
    "probe-no-random": (json.dumps({"probe": {"knn_top1": 0.5}}), "probe.knn_top1_random is missing"),
    "model-text": (json.dumps({"model": {"pred_error_k5": "low"}}), "model.pred_error_k5 is 'low', not a number"),
    "history-numbers": (json.dumps({"history": [1, 2]}), "history[0] is 1, not an object"),
    "history-no-return": (json.dumps({"history": [{}]}), "history[0].eval_return_mean is missing"),
    "collected-text": (json.dumps({"data": {"collected": {"steps": "many"}}}), "data.collected.steps is 'many'"),
    "steps-bool": (json.dumps({**GOOD, "real_env_steps": True}), "real_env_steps is True, not a number"),
}


@pytest.fixture
def runs(tmp_path):
    for name, summary in [("good", json.dumps(GOOD)), *((name, text) for name, (text, _) in MALFORMED.items())]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(summary)
    (tmp_path / "not-utf8").mkdir()
    (tmp_path / "not-utf8" / "summary.json").write_bytes(b'{"status": "\xff\xfe"}')
    return tmp_path


def test_each_malformed_summary_is_a_row_naming_what_is_wrong(runs):
    rows = {row["name"]: row for row in read_runs(runs)}
    assert len(rows) == len(MALFORMED) + 2
    for name, (_, problem) in MALFORMED.items():
        assert rows[name]["status"].startswith("malformed summary: "), (name, rows[name])
        assert problem in rows[name]["status"], (name, rows[name]["status"])
    assert rows["not-utf8"]["status"].startswith("unreadable summary")
    good = rows["good"]
    assert (good["status"], good["env"], good["env_steps"], good["wall"]) == ("done", "CartPole-v1", 10547, "1m55s")
    assert good["result"] == "real 85.8 ± 51.6"
    assert len(format_table(list(rows.values())).splitlines()) == len(rows) + 1


@pytest.mark.slow
def test_wm_runs_prints_the_whole_table(runs):
    result = wm("runs", "--runs", str(runs))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(MALFORMED) + 3  # the header, the good run, the undecodable one and each malformed one
    assert any(line.startswith("good ") and "real 85.8" in line for line in lines)
    assert sum("malformed summary" in line for line in lines) == len(MALFORMED)


def test_an_infinite_wall_time_is_left_blank(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text('{"status": "done", "wall_seconds": Infinity}')
    assert read_runs(tmp_path)[0]["wall"] == ""
