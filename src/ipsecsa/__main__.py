"""``python -m ipsecsa``: the same command as the ``ipsecsa`` console script."""

from ipsecsa.cli.main import main

if __name__ == "__main__":
    main(prog_name="ipsecsa")
