"""The progress board: a run's node table kept from its events alone."""

from __future__ import annotations

from rich.console import Console

from headrace.cli.progress import MAX_ROWS, Board, Row, table

EVENTS = [
    ("RunStarted", {}),
    ("NodeScheduled", {"node_id": "a", "attempt": 1}),
    ("NodeStarted", {"node_id": "a", "attempt": 1}),
    ("NodeRetrying", {"node_id": "a", "attempt": 1, "error": {"message": "flaky"}}),
    ("NodeScheduled", {"node_id": "a", "attempt": 2}),
    ("NodeCompleted", {"node_id": "a", "attempt": 2}),
    ("NodeStarted", {"node_id": "m", "attempt": 1, "width": 3}),
    ("NodeScheduled", {"node_id": "m[0]", "attempt": 1}),
    ("NodeCompleted", {"node_id": "m[0]", "attempt": 1}),
    ("NodeCompleted", {"node_id": "m[2]", "attempt": 1}),
    ("NodeWaiting", {"node_id": "w", "signal": "go"}),
]


def board_after(events: list[tuple[str, dict[str, object]]]) -> Board:
    board = Board(["a", "m", "w", "z"])
    for seq, (type_, data) in enumerate(events, 1):
        board.apply(seq, type_, data)
    return board


def test_the_board_follows_nodes_attempts_and_map_children() -> None:
    board = board_after(EVENTS)
    assert board.status == "running" and board.seq == len(EVENTS)
    assert board.rows() == [
        Row("a", "completed", 2, ""),
        Row("m", "running", 1, "2/3 items"),
        Row("w", "waiting", 0, ""),
        Row("z", "pending", 0, ""),
    ]
    retrying = board_after(EVENTS[:4]).rows()[0]
    assert retrying == Row("a", "retrying", 1, "flaky")
    ended = board_after([*EVENTS, ("RunFailed", {"error": {"message": "x"}})])
    assert ended.status == "failed"


def test_a_change_to_a_top_level_node_is_reported_a_childs_is_not() -> None:
    board = Board(["a", "m"])
    assert board.apply(1, "NodeScheduled", {"node_id": "a", "attempt": 1}) == "a"
    assert board.apply(2, "NodeCompleted", {"node_id": "m[4]", "attempt": 1}) is None
    assert board.apply(3, "SignalReceived", {"name": "go"}) is None


def text_of(rows: list[Row]) -> str:
    console = Console(width=120, record=True)
    console.print(table("running", rows))
    return console.export_text()


def test_a_large_run_shows_its_active_nodes_and_counts_the_rest() -> None:
    rows = [Row(f"n{i}", "completed", 1, "") for i in range(20_000)]
    rows[19_990] = Row("n19990", "running", 1, "")
    rows += [Row(f"p{i}", "pending", 0, "") for i in range(9)]
    text = text_of(rows)
    assert "n19990" in text and "n0 " not in text
    assert "... 20008 more" in text and "19999 completed, 9 pending" in text
    small = [Row(f"n{i}", "pending", 0, "") for i in range(MAX_ROWS)]
    assert all(f"n{i} " in text_of(small) for i in range(MAX_ROWS))
