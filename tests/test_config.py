"""
Tests for :mod:`nixeryd.app.config`.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from nixeryd.app.config import Config, config_from
from nixeryd.app.settings import SourceSetting, parse_nix_options

BASE_ENV = {"NIXERY_PKGS_PATH": "/srv/pkgs", "STORAGE_PATH": "/srv/storage"}


def build(options: Optional[dict[str, Any]] = None, **environ: str) -> Config:
    """A config from options and ``BASE_ENV`` updated with ``environ``."""
    env = dict(BASE_ENV)
    env.update(environ)
    return config_from(options or {}, env)


class DefaultsTests(SynchronousTestCase):
    """A minimal configuration."""

    def test_defaults(self) -> None:
        """Only a source and a storage path are needed; the rest has defaults."""
        config = build()
        self.assertEqual(config, Config(
            listen="tcp:8080", source=SourceSetting("path", "/srv/pkgs"),
            storage_backend="filesystem", storage_path="/srv/storage",
            gcs_bucket=None, google_credentials=None, gcs_endpoint=None,
            gcs_public=False, gcs_signing_account=None, gce_metadata_host=None,
            gcs_iam_endpoint="https://iamcredentials.googleapis.com",
            nix_timeout=600.0,
            popularity_url=None, max_builds=2, layer_budget=94, nix_options=(),
            layer_threads=4))

    def test_frozen(self) -> None:
        """The configuration cannot be changed after it is built."""
        config = build()
        self.assertRaises(attrs.exceptions.FrozenInstanceError,
                          setattr, config, "layer_threads", 9)


class GCSEndpointTests(SynchronousTestCase):
    """Where GCS requests go."""

    def test_emulator_variable(self) -> None:
        """STORAGE_EMULATOR_HOST names an emulator; a bare host:port means HTTP."""
        self.assertEqual(build(STORAGE_EMULATOR_HOST="127.0.0.1:9023").gcs_endpoint,
                         "http://127.0.0.1:9023")
        self.assertEqual(build(STORAGE_EMULATOR_HOST="http://localhost:1/").gcs_endpoint,
                         "http://localhost:1")

    def test_bad_scheme(self) -> None:
        """An endpoint that is not http(s) is refused."""
        self.assertRaises(UsageError, build, STORAGE_EMULATOR_HOST="ftp://x")


class SourceTests(SynchronousTestCase):
    """The package source."""

    def test_order(self) -> None:
        """The channel wins over the repository, which wins over the path."""
        self.assertEqual(build(NIXERY_CHANNEL="nixos-unstable",
                               NIXERY_PKGS_REPO="https://x/y.git").source,
                         SourceSetting("channel", "nixos-unstable"))
        self.assertEqual(build(NIXERY_PKGS_REPO="https://x/y.git").source,
                         SourceSetting("repo", "https://x/y.git"))

    def test_empty_is_unset(self) -> None:
        """Empty variables are skipped."""
        self.assertEqual(build(NIXERY_CHANNEL="", NIXERY_PKGS_REPO="").source,
                         SourceSetting("path", "/srv/pkgs"))

    def test_option_overrides(self) -> None:
        """A source option is used before any variable."""
        config = build({"pkgs-repo": "git@host:p.git"}, NIXERY_CHANNEL="c")
        self.assertEqual(config.source, SourceSetting("repo", "git@host:p.git"))

    def test_missing(self) -> None:
        """No source at all is one clear usage error."""
        error = self.assertRaises(UsageError, config_from, {}, {"STORAGE_PATH": "/s"})
        self.assertEqual(
            str(error),
            "no package source: set NIXERY_PKGS_PATH, NIXERY_PKGS_REPO or"
            " NIXERY_CHANNEL (or --pkgs-path, --pkgs-repo or --channel)")

    def test_malformed(self) -> None:
        """A channel that names no channel or commit, a URL that looks like an option."""
        for options, expected in (
                ({"channel": "bad channel"},
                 "NIXERY_CHANNEL/--channel: 'bad channel' is not a nixpkgs channel name"
                 " or commit"),
                ({"pkgs-repo": "--upload-pack=x"},
                 "NIXERY_PKGS_REPO/--pkgs-repo: '--upload-pack=x' is not a git"
                 " repository URL")):
            with self.subTest(options=options):
                error = self.assertRaises(UsageError, build, options)
                self.assertEqual(str(error), expected)


class ListenTests(SynchronousTestCase):
    """The listening endpoint."""

    def test_port_variable(self) -> None:
        """PORT becomes a TCP endpoint."""
        self.assertEqual(build(PORT="9000").listen, "tcp:9000")

    def test_port_option(self) -> None:
        """--port overrides PORT."""
        self.assertEqual(build({"port": "9001"}, PORT="9000").listen, "tcp:9001")

    def test_listen(self) -> None:
        """--listen is used as given and wins over PORT."""
        self.assertEqual(build({"listen": "unix:/run/n.sock"}, PORT="1").listen,
                         "unix:/run/n.sock")

    def test_both_options(self) -> None:
        """--listen together with --port is refused."""
        self.assertRaises(UsageError, build, {"listen": "tcp:1", "port": "2"})

    def test_bad_port(self) -> None:
        """Ports that are not numbers 0-65535 are refused."""
        for port in ("http", "70000", "-1"):
            with self.subTest(port=port):
                self.assertRaises(UsageError, build, PORT=port)


class StorageTests(SynchronousTestCase):
    """The storage backend and its settings."""

    def test_filesystem_needs_path(self) -> None:
        """The filesystem backend without STORAGE_PATH is refused."""
        error = self.assertRaises(UsageError, config_from, {},
                                  {"NIXERY_PKGS_PATH": "/p"})
        self.assertIn("STORAGE_PATH", str(error))

    def test_gcs(self) -> None:
        """The gcs backend takes the bucket and optional credentials."""
        config = build(NIXERY_STORAGE_BACKEND="gcs", GCS_BUCKET="b",
                       GOOGLE_APPLICATION_CREDENTIALS="/k.json")
        self.assertEqual((config.storage_backend, config.gcs_bucket,
                          config.google_credentials), ("gcs", "b", "/k.json"))

    def test_gcs_needs_bucket(self) -> None:
        """The gcs backend without a bucket is refused."""
        error = self.assertRaises(UsageError, build, NIXERY_STORAGE_BACKEND="gcs")
        self.assertIn("GCS_BUCKET", str(error))

    def test_gcs_without_key(self) -> None:
        """
        Real Cloud Storage without a key file is configured (the metadata
        server gives its credentials, checked at start-up); an emulator
        alone is enough too.
        """
        config = build(NIXERY_STORAGE_BACKEND="gcs", GCS_BUCKET="b")
        self.assertEqual((config.google_credentials, config.gcs_endpoint,
                          config.gce_metadata_host, config.gcs_public), (None, None, None, False))
        config = build(NIXERY_STORAGE_BACKEND="gcs", GCS_BUCKET="b",
                       STORAGE_EMULATOR_HOST="127.0.0.1:9023")
        self.assertEqual((config.google_credentials, config.gcs_endpoint),
                         (None, "http://127.0.0.1:9023"))

    def test_gcs_keyless_settings(self) -> None:
        """
        The public flag, the signing account, the metadata server and the
        IAM endpoint come from options or their variables.
        """
        config = build(NIXERY_STORAGE_BACKEND="gcs", GCS_BUCKET="b", GCS_PUBLIC="yes",
                       GCS_SIGNING_ACCOUNT="signer@p.iam.gserviceaccount.com",
                       GCE_METADATA_HOST="127.0.0.1:8999",
                       GCS_IAM_ENDPOINT="http://127.0.0.1:9000")
        self.assertEqual((config.gcs_public, config.gcs_signing_account,
                          config.gce_metadata_host, config.gcs_iam_endpoint),
                         (True, "signer@p.iam.gserviceaccount.com", "127.0.0.1:8999",
                          "http://127.0.0.1:9000"))
        self.assertTrue(build({"gcs-public": 1}, NIXERY_STORAGE_BACKEND="gcs",
                              GCS_BUCKET="b").gcs_public)
        self.assertFalse(build(NIXERY_STORAGE_BACKEND="gcs", GCS_BUCKET="b",
                               GCS_PUBLIC="0").gcs_public)
        self.assertRaises(UsageError, build, NIXERY_STORAGE_BACKEND="gcs", GCS_BUCKET="b",
                          GCS_PUBLIC="maybe")

    def test_unknown_backend(self) -> None:
        """Backends other than filesystem, gcs and s3 are refused."""
        error = self.assertRaises(UsageError, build, {"storage-backend": "swift"})
        self.assertIn("filesystem or gcs or s3", str(error))


class S3ConfigTests(SynchronousTestCase):
    """The s3 backend's settings."""

    def test_aws_defaults(self) -> None:
        """On AWS: virtual-hosted style, us-east-1, 300 s URLs; only AWS variables kept."""
        config = build(NIXERY_STORAGE_BACKEND="s3", S3_BUCKET="images",
                       AWS_ACCESS_KEY_ID="AKIA", AWS_SECRET_ACCESS_KEY="secret",
                       UNRELATED="x")
        s3 = config.s3
        assert s3 is not None
        self.assertEqual((s3.bucket, s3.endpoint, s3.region, s3.addressing_style,
                          s3.url_lifetime, s3.public_url),
                         ("images", None, "us-east-1", "virtual", 300, None))
        self.assertEqual(dict(s3.aws_environment),
                         {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "secret"})
        self.assertNotIn("secret", repr(config))

    def test_endpoint_means_path_style(self) -> None:
        """With an endpoint, path style unless told otherwise; options win over variables."""
        config = build({"s3-endpoint": "http://127.0.0.1:9000/", "s3-region": "auto"},
                       NIXERY_STORAGE_BACKEND="s3", S3_BUCKET="b", S3_REGION="eu-west-3")
        assert config.s3 is not None
        self.assertEqual((config.s3.endpoint, config.s3.region, config.s3.addressing_style),
                         ("http://127.0.0.1:9000", "auto", "path"))
        config = build(NIXERY_STORAGE_BACKEND="s3", S3_BUCKET="b",
                       S3_ENDPOINT="https://minio.example", S3_ADDRESSING_STYLE="virtual",
                       S3_URL_LIFETIME="60", S3_PUBLIC_URL="https://cdn.example/images")
        assert config.s3 is not None
        self.assertEqual((config.s3.addressing_style, config.s3.url_lifetime,
                          config.s3.public_url),
                         ("virtual", 60, "https://cdn.example/images"))

    def test_bucket_names_that_are_not_one_label_are_path_style(self) -> None:
        """
        On AWS a bucket name with dots, capitals or underscores is addressed
        path style (a virtual host would not match the certificate of
        ``*.s3.<region>.amazonaws.com``), as AWS's SDKs do, unless told.
        """
        for bucket in ("images.example.com", "Legacy_Images"):
            config = build(NIXERY_STORAGE_BACKEND="s3", S3_BUCKET=bucket)
            assert config.s3 is not None
            self.assertEqual(config.s3.addressing_style, "path", bucket)
        config = build(NIXERY_STORAGE_BACKEND="s3", S3_BUCKET="images.example.com",
                       S3_ADDRESSING_STYLE="virtual")
        assert config.s3 is not None
        self.assertEqual(config.s3.addressing_style, "virtual")

    def test_region_from_aws_variables(self) -> None:
        """S3_REGION, else AWS_REGION, else AWS_DEFAULT_REGION."""
        for environ, region in (({"AWS_DEFAULT_REGION": "ap-south-1"}, "ap-south-1"),
                                ({"AWS_DEFAULT_REGION": "x", "AWS_REGION": "eu-north-1"},
                                 "eu-north-1"),
                                ({"AWS_REGION": "x", "S3_REGION": "sa-east-1"}, "sa-east-1")):
            config = build(None, NIXERY_STORAGE_BACKEND="s3", S3_BUCKET="b", **environ)
            assert config.s3 is not None
            self.assertEqual(config.s3.region, region)

    def test_refused(self) -> None:
        """A missing bucket, a bad style, endpoint, lifetime or half a key are usage errors."""
        for environ, expected in (
                ({}, "s3 storage needs a bucket: set S3_BUCKET (or --s3-bucket)"),
                ({"S3_BUCKET": "images/old"},
                 "S3_BUCKET/--s3-bucket: 'images/old' is not a bucket name"),
                ({"S3_BUCKET": "my bucket"},
                 "S3_BUCKET/--s3-bucket: 'my bucket' is not a bucket name"),
                ({"S3_BUCKET": "b", "S3_ADDRESSING_STYLE": "dns"},
                 "S3_ADDRESSING_STYLE/--s3-addressing-style (path or virtual): 'dns' is out"),
                ({"S3_BUCKET": "b", "S3_ENDPOINT": "127.0.0.1:9000"},
                 "S3_ENDPOINT/--s3-endpoint must be an http(s) URL"),
                ({"S3_BUCKET": "b", "S3_ENDPOINT": "http://h:port"},
                 "S3_ENDPOINT/--s3-endpoint must be an http(s) URL"),
                ({"S3_BUCKET": "b", "S3_ENDPOINT": "http://h:9000/s3"},
                 "S3_ENDPOINT/--s3-endpoint must be scheme://host[:port], without a path"),
                ({"S3_BUCKET": "b", "S3_URL_LIFETIME": "604801"},
                 "S3_URL_LIFETIME/--s3-url-lifetime (seconds): '604801' is out of range"),
                ({"S3_BUCKET": "b", "S3_PUBLIC_URL": "ftp://x"},
                 "S3_PUBLIC_URL/--s3-public-url must be an http(s) URL"),
                ({"S3_BUCKET": "b", "AWS_SECRET_ACCESS_KEY": "s"},
                 "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together")):
            error = self.assertRaises(UsageError, build, NIXERY_STORAGE_BACKEND="s3",
                                      **environ)
            self.assertIn(expected, str(error))

    def test_not_read_for_other_backends(self) -> None:
        """S3 settings are ignored by the filesystem backend."""
        self.assertIsNone(build(S3_ADDRESSING_STYLE="dns").s3)


class NumberTests(SynchronousTestCase):
    """Numeric settings are converted and range-checked."""

    def test_values(self) -> None:
        """Valid values from options and variables are used."""
        config = build({"max-builds": "3", "threads": "8"}, NIX_TIMEOUT="30.5",
                       NIXERY_LAYER_BUDGET="125")
        self.assertEqual((config.nix_timeout, config.max_builds, config.layer_threads,
                          config.layer_budget), (30.5, 3, 8, 125))

    def test_option_over_variable(self) -> None:
        """An option overrides its variable."""
        self.assertEqual(build({"nix-timeout": "5"}, NIX_TIMEOUT="30").nix_timeout, 5.0)

    def test_invalid(self) -> None:
        """Out-of-range or malformed numbers are one-line usage errors."""
        for options, environ in (({}, {"NIX_TIMEOUT": "0"}),
                                 ({}, {"NIX_TIMEOUT": "-3"}),
                                 ({}, {"NIX_TIMEOUT": "nan"}),
                                 ({}, {"NIX_TIMEOUT": "inf"}),
                                 ({}, {"NIX_TIMEOUT": "1m"}),
                                 ({}, {"NIXERY_MAX_BUILDS": "0"}),
                                 ({}, {"NIXERY_LAYER_BUDGET": "0"}),
                                 ({}, {"NIXERY_LAYER_BUDGET": "126"}),
                                 ({"threads": "0"}, {}),
                                 ({"threads": "two"}, {})):
            with self.subTest(options=options, environ=environ):
                error = self.assertRaises(UsageError, build, options, **environ)
                self.assertNotIn("\n", str(error))


class NixOptionTests(SynchronousTestCase):
    """Nix settings."""

    def test_parse(self) -> None:
        """Entries are split on ; and newlines; values may be empty or spaced."""
        self.assertEqual(parse_nix_options("substituters=; a = x y\nb=1;;"),
                         [("substituters", ""), ("a", "x y"), ("b", "1")])

    def test_merge(self) -> None:
        """Options follow the variable's entries and replace same-named ones."""
        config = build({"nix-option": ["b=2", "c="]},
                       NIXERY_NIX_OPTIONS="a=1;b=1")
        self.assertEqual(config.nix_options, (("a", "1"), ("b", "2"), ("c", "")))

    def test_invalid(self) -> None:
        """Entries without = or with an empty name are refused."""
        for text in ("substituters", "=x", "a b=c"):
            with self.subTest(text=text):
                self.assertRaises(UsageError, build, {"nix-option": [text]})
        self.assertRaises(UsageError, build, NIXERY_NIX_OPTIONS="oops")


class OptionalTests(SynchronousTestCase):
    """Optional settings."""

    def test_popularity(self) -> None:
        """The popularity URL comes from the option or the variable."""
        self.assertEqual(build(NIX_POPULARITY_URL="/p.json").popularity_url, "/p.json")
        self.assertEqual(build({"popularity-url": "http://x/p"}).popularity_url,
                         "http://x/p")
