"""The harness's child processes start in the parent's working directory and with its environment of the moment,
as spawned ones would, though they are forked from a server started earlier, elsewhere."""

from __future__ import annotations

import os
import subprocess

from harness.processes import context, pool, process


def test_a_child_starts_where_and_with_what_the_parent_has_now(tmp_path, monkeypatch):
    context().Process(target=os.getpid).start()  # a server (where there is one) started here, before the changes
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARNESS_TEST_VALUE", "set after the server started")
    report = 'pwd > where.txt; printf %s "$HARNESS_TEST_VALUE" >> where.txt'
    child = process(subprocess.run, (["sh", "-c", report],))
    child.start()
    child.join()
    assert child.exitcode == 0
    assert (tmp_path / "where.txt").read_text() == f"{tmp_path}\nset after the server started"

    (tmp_path / "where.txt").unlink()
    with pool(1, os.getpid) as workers:
        workers.apply(subprocess.run, (["sh", "-c", report],))
    assert (tmp_path / "where.txt").read_text() == f"{tmp_path}\nset after the server started"
