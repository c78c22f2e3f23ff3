"""A hostile tenant against another user on a real stack (issue 13's acceptance suite,
tests/integration/hostile/): the attack code jobs run (`attacks`), the scenario that
plants canaries and runs the jobs (`campaign`), and what a sandbox reports (`denials`)."""
