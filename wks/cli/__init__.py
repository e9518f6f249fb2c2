"""The `wks` command line: one module per subcommand; `__main__` wires them together.

This package is the composition root: only it imports `consumers/` and `producers/`.
"""
