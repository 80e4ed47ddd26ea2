"""Stand-ins that speak the real wire protocols, shipped beside the product like ``trio.testing``.

The product never imports this package (``tests/test_layers.py`` enforces it); tests, the demo and
the benchmark do.

- :mod:`.acs`       a simulated ACS: Event Grid, HMAC-checked Call Automation REST, JWKS over TLS
                    with its own CA, JWT-signed callbacks, and the media WebSocket client
- :mod:`.realtime`  the local realtime test peer (GA events, energy VAD, greeting + echo; no model)
- :mod:`.tokens`    the one ACS JWT signer (tests and the simulator share it)
- :mod:`.assets`    recorded audio for the peer and the simulated caller
"""
