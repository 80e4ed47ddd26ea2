"""The server level: routes, socket adapters, the call registry and supervisor, auth, ACS REST.

:func:`.app.create_app` builds the Quart-Trio app; :func:`.server.serve` runs it under hypercorn
with a drain on SIGTERM.  The adapters :mod:`.quart_media` (ACS media socket) and
:mod:`.model_ws` (model socket, trio-websocket) turn third-party sockets into the call's seams.
"""
