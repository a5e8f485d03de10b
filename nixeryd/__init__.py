"""
nixeryd: a container registry that builds OCI images from Nix packages on demand.

Kept free of imports so that twistd's plugin scan stays fast.
"""
