"""
The image service between the HTTP side and the build side: memory and
storage caches, one build per image however many ask, and the build limit.
"""
