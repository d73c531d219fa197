"""trainguard.cli: the `trainguard` command line.

`trainguard.cli.main:main` is the entry point; each command group is one module in `commands/`
(listed in `main.COMMANDS`); `demo/` is `trainguard demo`. No library area imports this one.
"""

__all__: list[str] = []
