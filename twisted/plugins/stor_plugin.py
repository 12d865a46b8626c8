"""twistd plugin: ``twistd -n stor --config FILE``.

Kept tiny so nothing heavy is imported until twistd picks this plugin.
"""

from twisted.application.service import ServiceMaker

stor = ServiceMaker(
    "stor",
    "stor.process.service",
    "Store and serve files addressed by their SHA-256 over HTTP.",
    "stor",
)
