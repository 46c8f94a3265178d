"""ipsecsa.sad: the SA database (inbound index, outbound classifier, bundles)."""

from ipsecsa.sad.classifier import Classifier, Filter
from ipsecsa.sad.database import Bundle, SaDatabase, SadError, filters_for

__all__ = ["Bundle", "Classifier", "Filter", "SaDatabase", "SadError", "filters_for"]
