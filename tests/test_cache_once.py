"""``once`` honours ``cache = true``: equal inputs run once, across hypotheses and calls."""

from __future__ import annotations

import json
from pathlib import Path

from harness import make_repo, write_config
from test_cli import po


def test_once_shares_one_run_reuses_it_later_and_no_cache_forces(tmp_path: Path) -> None:
    repo, trees = make_repo(tmp_path)  # repo, hyp-1, hyp-2: one commit, equal inputs
    runs = tmp_path / "runs.txt"
    script = {
        "name": "unit",
        "command": ["sh", "-c", f'echo "ran in $PO_HYPOTHESIS" >> {runs}; echo boom; exit 3'],
        "cache": True,
        "timeout_s": 30,
    }
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [script])
    first = po("once", "-c", str(cfg), "--json")
    assert first.returncode == 1, first.stderr
    results = json.loads(first.stdout)["results"]
    assert len(runs.read_text().splitlines()) == 1  # three hypotheses, one process
    ran = [r for r in results if not r["cached"]]
    assert len(ran) == 1 and ran[0]["cached_from"] is None
    for r in results:
        # a fail is reused with its exit code and output
        assert (r["result"], r["exit_code"]) == ("fail", 3)
        assert "boom" in r["output_tail"]
        if r["cached"]:
            assert r["cached_from"] == ran[0]["job_id"]
            assert "boom" in Path(r["log_path"]).read_text()

    again = po("once", "-c", str(cfg), "--json")
    assert len(runs.read_text().splitlines()) == 1  # the store survives the process
    assert all(r["cached"] for r in json.loads(again.stdout)["results"])
    table = po("once", "-c", str(cfg))
    assert "FAIL" in table.stdout and "(cached)" in table.stdout

    (trees["hyp-1"] / "src" / "app.py").write_text("VALUE = 2\n")
    changed = json.loads(po("once", "-c", str(cfg), "--json").stdout)["results"]
    assert [r["hypothesis"] for r in changed if not r["cached"]] == ["hyp-1"]
    assert len(runs.read_text().splitlines()) == 2

    forced = po("once", "-c", str(cfg), "--json", "--no-cache")
    assert not any(r["cached"] for r in json.loads(forced.stdout)["results"])
    assert len(runs.read_text().splitlines()) == 5


def test_once_without_cache_key_adds_no_fields(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, hypotheses=())
    cfg = write_config(tmp_path / "cfg" / "po.toml", repo, [{"name": "t", "command": ["true"]}])
    result = json.loads(po("once", "-c", str(cfg), "--json").stdout)["results"][0]
    assert "cached" not in result and "cached_from" not in result
    assert not (tmp_path / "cfg" / "state" / "cache").exists()
