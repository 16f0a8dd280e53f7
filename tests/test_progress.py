"""Progress in a log file: plain lines at an interval, not carriage-return frames."""
from __future__ import annotations

import io

import pytest

from hybrid_rl.core.progress import PlainProgress, progress_bar


def test_plain_progress_writes_whole_lines_with_rate_and_eta(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    now = [0.0]
    monkeypatch.setattr("hybrid_rl.core.progress.time.monotonic", lambda: now[0])
    out = io.StringIO()
    bar = PlainProgress(total=1000, desc="grid", unit="step", stream=out, interval_s=60)
    now[0] = 30.0
    bar.update(100)  # at 30 s: no line yet
    bar.set_postfix_str("runs 1/4")
    now[0] = 61.0
    bar.update(400)  # at 61 s: a line
    bar.write("done run-a: completed")
    now[0] = 90.0
    bar.update(100)  # at 90 s: within the interval
    now[0] = 125.0
    bar.update(400)  # at 125 s: a line
    bar.close()  # nothing new since: no repeat
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 2
    assert lines[0] == "grid:  50% 500/1,000 step, 8.2 step/s, elapsed 1:01, ETA 1:01, runs 1/4"
    assert lines[1] == "grid: 100% 1,000/1,000 step, 8 step/s, elapsed 2:05, runs 1/4"
    assert capsys.readouterr().out == "done run-a: completed\n"  # messages to stdout, as tqdm.write


def test_tqdm_disable_silences_and_a_terminal_keeps_tqdm(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from tqdm import tqdm

    monkeypatch.setenv("TQDM_DISABLE", "1")
    bar = progress_bar(total=10, desc="x")
    bar.update(10)
    bar.close()
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("TQDM_DISABLE")
    assert isinstance(progress_bar(total=10, desc="x"), PlainProgress)  # pytest's stderr is no terminal
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    bar = progress_bar(total=10, desc="x")
    assert isinstance(bar, tqdm)
    bar.close()
    assert [item for item in progress_bar(range(3), desc="y", disable=True)] == [0, 1, 2]
