"""The ``ipsecsa`` command: a thin layer that parses arguments, calls the library, prints.

The command tree is built with click (composable groups, one module per command family, testable
through real subprocesses); tables and progress bars use rich, which draws colour only on a
terminal and honours ``NO_COLOR``. Logic lives in the library (``ipsecsa.tools``, ``ipsecsa.io``);
nothing here decides anything about packets or SAs.

Adding a command is one line in :data:`ipsecsa.cli.main.COMMANDS` (``"name": "module:object"``),
and the module is imported only when that command runs, so ``ipsecsa --help`` stays fast.
"""
