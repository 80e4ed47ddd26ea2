"""The offline demo: the server, the ACS simulator and the local realtime test peer on loopback.

The roof of the house: it composes the product with :mod:`acs_trio.testing`, and nothing in the
product imports it.  ``acs-trio demo`` runs :func:`.offline_call.main`.
"""

from .offline_call import main as main

__all__ = ["main"]
