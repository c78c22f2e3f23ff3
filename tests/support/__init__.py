"""What the test suites (and bench/) share: stacks, polling, processes, databases, payloads.

Not a test package: pytest never collects it (no `test_` modules; `norecursedirs` in
pyproject.toml). Test modules and conftests import from here, never from each other.
"""
