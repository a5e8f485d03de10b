"""
The default of every setting, in one place.

The daemon's options, the build command, the wiring and the classes they
build all take their defaults from here, so a default is changed once and
the help texts say the truth.
"""

from __future__ import annotations

#: Where the daemon listens (a Twisted server endpoint string).
LISTEN = "tcp:8080"
#: Seconds each Nix step of an image (evaluation, then build) may take.
NIX_TIMEOUT = 600.0
#: Where images are stored: ``filesystem`` or ``gcs``.
STORAGE_BACKEND = "filesystem"
#: Nix builds started at once (evaluations have as many slots of their
#: own); see LONG_NIX_STEP for what long builds leave to others.
MAX_BUILDS = 2
#: Images in the making at once (pinned, evaluated, built, or waiting for
#: a slot), from every client; cold requests beyond it are answered 429.
#: 32 is sixteen times the default build slots: eight images per address
#: (a quarter of it) covers a CI matrix pulling several new images at
#: once, and with two evaluation slots the whole queue is evaluated within
#: a few minutes, while a flood is refused at once instead of delaying
#: everyone behind it.
MAX_QUEUE = 32
#: Seconds a permanent failure (an unknown package, a failed build) is
#: answered from memory, without asking Nix again; a moving source's
#: failures are kept no longer than MOVING_TTL.
FAILURE_TTL = 300.0
#: Seconds after which a running Nix step (an evaluation or a build) is
#: long: it then leaves its slot to the next step, up to twice MAX_BUILDS
#: steps of each kind at once, so slow packages delay other images by at
#: most this long.
LONG_NIX_STEP = 10.0
#: Store-path layers per image (the customisation layer comes on top).
LAYER_BUDGET = 94
#: The most store-path layers an image may have: container runtimes
#: refuse images of more than about 127 layers.
MAX_LAYER_BUDGET = 125
#: Threads writing layers (tar, gzip, hashing).
LAYER_THREADS = 4
#: Threads for storage calls (file metadata, small reads and writes,
#: moves), apart from the layer threads so that warm requests never queue
#: behind the seconds-long work of a cold build.
STORAGE_THREADS = 4
#: Threads sending blob bodies with sendfile; concurrent blob downloads
#: beyond this are streamed through the reactor instead.
BLOB_THREADS = 32
#: Seconds a tag of a moving source (a branch, a local path) answers from
#: memory before it is evaluated again.
MOVING_TTL = 60.0
#: Finished builds whose pages (and log) are kept.
KEEP_BUILDS = 100
#: Nix log lines kept per build (the last ones).
BUILD_LOG_LINES = 2000
#: The image tag when none is given.
TAG = "latest"
