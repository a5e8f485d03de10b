"""
The ``nixery`` twistd plugin.

Only names :mod:`nixeryd.app.tap`, which is imported when the plugin is used,
so listing twistd commands stays fast.
"""

from twisted.application.service import ServiceMaker

nixery = ServiceMaker(  # type: ignore[no-untyped-call]
    "nixery",
    "nixeryd.app.tap",
    "A container registry that builds images from Nix packages on demand.",
    "nixery",
)
