"""The worker-side job runtime: relay, supervisor, engine starters and zygote (see README.md)."""
