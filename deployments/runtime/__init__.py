"""The worker-side job runtime: relay, supervisor, engine starters and zygote (see README.md).

Importing the package imports nothing: the relay, which every job runs, stays small.
"""
