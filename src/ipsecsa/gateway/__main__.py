"""``python -m ipsecsa.gateway ...`` runs ``ipsecsa gateway ...``."""

import sys

from ipsecsa.gateway.command import main

sys.exit(main())
