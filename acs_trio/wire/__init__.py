"""Wire codecs: pure, synchronous translations between bytes on a socket and typed values.

Nothing here knows tasks, sockets or settings objects, so every function can be tested with a
string in and a value out:

- :mod:`.acs_media`  ACS bidirectional media streaming messages (docs/protocols/acs.md §4)
- :mod:`.realtime`   Realtime API GA client and server events (docs/protocols/realtime.md)
- :mod:`.webhook`    Event Grid and Call Automation callback bodies (docs/protocols/acs.md §1–3)
"""
