"""``ipsecsa demo``: the end-to-end data-path demonstration (``ipsecsa.demo``)."""

from __future__ import annotations

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": []},
               help="Run the end-to-end data-path demo (arguments are the demo's own; "
                    "'ipsecsa demo --help' lists them).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def demo(args: tuple[str, ...]) -> None:
    from ipsecsa import demo as demo_module

    status = demo_module.main(list(args))
    raise SystemExit(status or 0)


__all__ = ["demo"]
