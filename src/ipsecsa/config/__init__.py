"""The SA description of ``docs/sa-format.md``: parse, validate, load and dump.

``SaConfig`` is the validated form; ``parse_sa`` turns one JSON object into it and
``SaConfig.to_dict`` back; ``load_sa_file``/``dump_sa_file`` handle ``{"sas": [...]}`` files.
"""

from ipsecsa.config.files import dump_sa_file, load_sa_file
from ipsecsa.config.model import Lifetime, SaConfig, SecretKey, UdpEncapsulation
from ipsecsa.config.parse import parse_sa

__all__ = [
    "Lifetime",
    "SaConfig",
    "SecretKey",
    "UdpEncapsulation",
    "dump_sa_file",
    "load_sa_file",
    "parse_sa",
]
