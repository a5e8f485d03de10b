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
#: Where images are stored: ``filesystem``, ``gcs`` or ``s3``.
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
#: The platforms images are built for, the default first (e.g.
#: ``linux/amd64,linux/arm64``); ``None``: this machine's platform alone.
PLATFORMS: str | None = None
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
#: Seconds a client has to send a whole request (its head, and any body)
#: from the moment it connects or sends the first byte of the next one;
#: not renewed by each byte, so a client dribbling a request is dropped.
HEAD_TIMEOUT = 10.0
#: Seconds a kept-alive connection may wait, between requests, for the
#: first byte of the next one.
IDLE_TIMEOUT = 30.0
#: Seconds a response may make no progress (its client reads nothing)
#: before the connection is aborted and its blob file closed.
STALL_TIMEOUT = 60.0
#: Connections one client address may hold at once; beyond it a new
#: connection gets a 503 and is closed at once.
MAX_CONNECTIONS_PER_CLIENT = 64
#: Descriptors kept out of the connection limit, for everything else the
#: daemon opens: storage and temporary files, Nix's and git's pipes,
#: logs, the thread pools' work.  The limit of connections in all is
#: half of the open-file limit left after these and BLOB_THREADS (each
#: connection may hold its socket and one blob file; each sendfile
#: thread one more copy of a socket).
DESCRIPTOR_RESERVE = 256
#: Seconds a tag of a moving source (a branch, a local path) answers from
#: memory before it is evaluated again.
MOVING_TTL = 60.0
#: Finished builds whose pages (and log) are kept.
KEEP_BUILDS = 100
#: Nix log lines kept per build (the last ones).
BUILD_LOG_LINES = 2000
#: The image tag when none is given.
TAG = "latest"
#: Seconds between two writes of the pulls recorded in memory (and at
#: stop): a pull is in storage, for the garbage collector, at most this
#: late.
PULL_RECORD_INTERVAL = 60.0
#: Seconds after which the daemon forgets, from memory, the images nobody
#: pulled in that time: their next pull looks in storage again, where the
#: garbage collector may have removed them (it keeps everything pulled
#: within a day or more, twice this).
MEMORY_SWEEP_INTERVAL = 6 * 3600.0
#: Hours during which nothing written is removed by the garbage collector:
#: blobs and documents of builds in progress.
GC_GRACE_HOURS = 6.0
#: Seconds before the first retry of a transient Cloud Storage failure
#: (408, 429, 5xx, a lost connection); each next wait doubles, up to
#: GCS_RETRY_CAP, and is drawn at random below that bound (full jitter).
GCS_RETRY_INITIAL = 0.5
#: Factor between the bounds of two successive waits.
GCS_RETRY_MULTIPLIER = 2.0
#: The longest wait between two attempts, in seconds.
GCS_RETRY_CAP = 16.0
#: Seconds after the first attempt beyond which a request is no longer
#: retried: its last failure stands (and becomes 503 UNAVAILABLE).
GCS_RETRY_DEADLINE = 60.0
#: Consecutive Cloud Storage failures (5xx, 408, lost connections) that,
#: lasting GCS_CIRCUIT_SUSTAINED seconds without a success, open the outage
#: circuit: requests then fail at once (503 with Retry-After).
GCS_CIRCUIT_FAILURES = 5
GCS_CIRCUIT_SUSTAINED = 5.0
#: Seconds the circuit stays open before one request probes Cloud Storage.
GCS_CIRCUIT_OPEN = 10.0
#: The region an S3 bucket is signed for when neither S3_REGION nor
#: AWS_REGION says (AWS's own default).
S3_REGION = "us-east-1"
#: Seconds a presigned S3 blob URL is valid: long enough for a client to
#: follow the redirect and download a large layer's first byte, short
#: enough that a URL passed on soon stops working (as GCS's signed URLs).
S3_URL_LIFETIME = 300
#: Where the GCE/GKE metadata server answers (``host[:port]``), which gives
#: tokens (and the signing account) without a key file, as Google's client
#: libraries find it; ``GCE_METADATA_HOST`` names another.
GCE_METADATA_HOST = "metadata.google.internal"
#: The IAM Credentials API, which signs blob URLs with the key Google holds
#: for a service account (``signBlob``) when no key file is given.
GCS_IAM_ENDPOINT = "https://iamcredentials.googleapis.com"
#: The part of a signed blob URL's lifetime during which it is handed out
#: again (signing through IAM is a request per URL).
GCS_SIGNED_URL_REUSE = 0.5

# -- private instances: authentication, tokens, TLS, limits per client ---------
#: The token service name (the ``service`` of challenges, tokens' ``aud``).
TOKEN_SERVICE = "nixeryd"
#: The issuer of nixeryd's own tokens (their ``iss``).
TOKEN_ISSUER = "nixeryd"
#: Seconds a token of nixeryd's own token endpoint lasts.
TOKEN_TTL = 300.0
#: Threads checking passwords (bcrypt) and tokens.
AUTH_THREADS = 2
#: Builds one user (or, unauthenticated, one address) may start per
#: minute; a build beyond is answered 429 with Retry-After.
COLD_PER_MINUTE = 60
