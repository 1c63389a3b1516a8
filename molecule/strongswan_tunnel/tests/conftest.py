"""Figures the scenario's tests measure, shown in the run's summary, where pytest does not hide them."""

import os
import pathlib


def pytest_sessionstart(session):
    # Only this run's figures: the file is appended to by the tests.
    path = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "recovery-times.txt"
    path.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter):
    path = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "recovery-times.txt"
    if path.exists():
        terminalreporter.section("strongswan_tunnel: recovery after charon is killed")
        for line in path.read_text(encoding="utf-8").splitlines():
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"(also in {path.name} in the scenario's ephemeral directory)")
