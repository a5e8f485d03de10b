"""
The shared vocabulary: registry errors, digests, the documents passed
between the image service and the HTTP side, media types, defaults, the
``Runner`` seam for blocking work and the helper for work shared by many
waiters.  Every other part imports from here; this imports from none.
"""
