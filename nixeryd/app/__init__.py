"""
The application shell: settings and configuration, the ``twistd nixery``
plugin, the service tree's wiring, log observers and ``nixeryd build``.
"""
