"""Prints how many hostile examples ran (per job), for the CI log and the issue's note."""


def pytest_terminal_summary(terminalreporter):
    from tests.hostile.test_jobs import CASES
    if CASES:
        per_job = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in sorted(CASES.items()))
        terminalreporter.write_line(f"hostile input: {sum(CASES.values())} cases ({per_job})")
