"""`wm runs` reads every run's summary.json into one table: the columns each kind of run fills."""

import json

from experiments.runs import format_table, read_runs


def write_summary(root, name, summary):
    (root / name).mkdir()
    (root / name / "summary.json").write_text(json.dumps(summary))


def test_cycle_evolve_and_train_runs_fill_their_columns(tmp_path):
    env = {"env_id": "CartPole-v1"}
    write_summary(
        tmp_path,
        "cycle",
        {
            "command": "cycle",
            "status": "done",
            "env": env,
            "iterations": 3,
            "env_steps": 31234,
            "best_eval_return": 480.5,
            "eval_return_mean": 470.0,
            "eval_return_std": 12.25,
            "dream_return": 300.0,
            "wall_seconds": 3725,
        },
    )
    write_summary(
        tmp_path,
        "evolve",
        {
            "command": "evolve",
            "status": "done",
            "env": env,
            "generations": 30,
            "real_env_steps": 10547,
            "eval_return_mean": 85.8,
            "eval_return_std": 51.6,
            "dream_return": 145.0,
            "wall_seconds": 115,
        },
    )
    write_summary(
        tmp_path,
        "train",
        {
            "command": "train",
            "status": "interrupted",
            "env": env,
            "data": {"collected": {"steps": 20002}},
            "model": {"pred_error_k5": 0.143, "pred_error_k5_baseline": 0.506},
        },
    )
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{not json")
    rows = {row["name"]: row for row in read_runs(tmp_path)}

    assert (rows["cycle"]["iterations"], rows["cycle"]["env_steps"], rows["cycle"]["best_return"]) == (
        3,
        31234,
        "480.5",
    )
    assert rows["cycle"]["wall"] == "1h02m" and rows["cycle"]["result"] == "real 470.0 ± 12.2, dream 300.0"
    assert (rows["evolve"]["env_steps"], rows["evolve"]["best_return"], rows["evolve"]["wall"]) == (
        10547,
        "85.8",
        "1m55s",
    )
    assert rows["train"]["env_steps"] == 20002 and rows["train"]["result"].startswith("pred_error_k5 0.143")
    assert rows["train"]["best_return"] == "" and rows["train"]["status"] == "interrupted"
    assert rows["broken"]["status"].startswith("unreadable summary")

    table = format_table(list(rows.values())).splitlines()
    assert table[0].split() == [
        "name",
        "command",
        "env",
        "status",
        "iterations",
        "env_steps",
        "best_return",
        "wall",
        "result",
    ]
    assert len(table) == 5 and all("CartPole-v1" in line for line in table[2:])  # broken, cycle, evolve, train


def test_an_interrupted_cycle_shows_the_iterations_it_evaluated_and_their_best(tmp_path):
    history = [{"eval_return_mean": 312.9}, {"eval_return_mean": 450.6}, {"eval_return_mean": 437.6}]
    write_summary(
        tmp_path, "cut", {"command": "cycle", "status": "interrupted", "env_steps": 29006, "history": history}
    )
    (row,) = read_runs(tmp_path)
    assert (row["iterations"], row["best_return"], row["env_steps"]) == (3, "450.6", 29006)


def test_an_env_that_reports_success_shows_its_success_rate(tmp_path):
    summary = {
        "command": "cycle",
        "status": "done",
        "env": {"env_id": "Parking-v0"},
        "eval_return_mean": 3.5,
        "eval_return_std": 1.25,
        "eval_success_rate": 0.84,
        "dream_return": 7.0,
    }
    write_summary(tmp_path, "parking", summary)
    (row,) = read_runs(tmp_path)
    assert row["result"] == "real 3.5 ± 1.2 (84% successful), dream 7.0"


def test_a_collection_with_an_action_repeat_counts_its_env_steps(tmp_path):
    # env.action_repeat=2: 10001 transitions of two env steps each
    collected = {"steps": 10001, "env_steps": 20002}
    write_summary(tmp_path, "repeated", {"command": "train", "data": {"collected": collected}})
    (row,) = read_runs(tmp_path)
    assert row["env_steps"] == 20002


def test_sort_orders_numbers_as_numbers_either_way_and_puts_runs_without_the_field_last(tmp_path, capsys):
    from experiments.cli import main  # `wm runs ...`

    for name, best, seconds in (("a", 90.5, 300), ("b", 480.0, 60), ("c", 100.25, 9000)):
        write_summary(
            tmp_path, name, {"command": "cycle", "status": "done", "best_eval_return": best, "wall_seconds": seconds}
        )
    write_summary(tmp_path, "d", {"command": "train", "status": "done"})  # no return at all
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "summary.json").write_text("[1, 2]")  # malformed: a row that says so, sorted last
    assert main(["runs", "--runs", str(tmp_path), "--sort", "best_return", "--reverse", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == ["b", "c", "a", "d", "e"]  # 480 > 100.25 > 90.5: not "90.5" > "480.0"
    assert rows[0]["best_return"] == "480.0" and rows[0]["wall_seconds"] == 60 and rows[0]["command"] == "cycle"
    assert rows[-1]["status"].startswith("malformed summary")
    assert main(["runs", "--runs", str(tmp_path), "--sort", "wall_seconds"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table[1:]] == ["b", "a", "c", "d", "e"]  # 60 s, 5 min, 2.5 h
