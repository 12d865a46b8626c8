"""The stor client: ``stor put``, ``stor get`` and ``stor verify`` on the reactor.

It talks to a stor server over HTTP only and imports nothing of the server
but :mod:`stor.core` (the SHA rules).  Modules, bottom up:

``errors``      what can go wrong with one item, and whether it is worth retrying
``retry``       exponential backoff with jitter, reset by progress
``localfiles``  blocking file work (hashing, ``.part`` files), always run in a thread
``threads``     the reactor's thread pool as the one place blocking calls go
``sink``        a response body into a blocking writer, with back-pressure
``producer``    a file on disk as a request body, read in a thread
``session``     the HTTP side: one connection pool, URLs, credentials, timeouts
``upload``      one ``put`` item; ``download`` one ``get``/``verify`` item
``report``      result lines; ``progress`` the terminal progress bar
``commands``    the three commands: many items, ``-j N`` at a time
"""
