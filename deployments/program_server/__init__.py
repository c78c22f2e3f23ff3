"""The program server: registered program versions served warm, each in its own
sandboxed process (README.md in this directory)."""
