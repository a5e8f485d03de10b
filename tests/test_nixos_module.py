"""
The NixOS module (``nix/module.nix``), evaluated with the real module
system of nixpkgs' ``lib``.

nixpkgs is not part of this project, so the tests need a copy of its
``lib`` folder: named by ``NIXPKGS_LIB`` (the folder holding
``default.nix``), or found at ``../shared/fixtures/nixpkgs-lib/lib`` beside
the checkout.  Without one, or without ``nix-instantiate``, they are
skipped, saying which is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from nixeryd.app.config import config_from
from nixeryd.app.privateconfig import PrivateConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(ROOT, "nix", "module.nix")


def _nixpkgs_lib() -> str | None:
    """The nixpkgs ``lib`` folder to evaluate with, if one is there."""
    candidates = [os.environ.get("NIXPKGS_LIB", ""),
                  os.path.join(os.path.dirname(ROOT), "shared", "fixtures",
                               "nixpkgs-lib", "lib")]
    for candidate in candidates:
        if candidate and os.path.isfile(os.path.join(candidate, "default.nix")):
            return os.path.abspath(candidate)
    return None


NIXPKGS_LIB = _nixpkgs_lib()

# The NixOS options the module sets, declared loosely: the tests look at
# what the module puts into them, not at what NixOS makes of it.
STUB_OPTIONS = """
{ lib, ... }:
let any = lib.mkOption { type = lib.types.anything; default = { }; }; in
{
  options = {
    assertions = lib.mkOption { type = lib.types.listOf lib.types.anything; default = [ ]; };
    users.users = any;
    users.groups = any;
    networking.firewall.allowedTCPPorts = lib.mkOption {
      type = lib.types.listOf lib.types.port; default = [ ]; };
    systemd.services = any;
  };
}
"""

PACKAGE = '{ type = "derivation"; name = "nixeryd"; outPath = "/nix/store/00000000000000000000000000000000-nixeryd"; }'


class NixOSModuleTests(SynchronousTestCase):
    """The module's options become the daemon's environment and unit."""

    def setUp(self) -> None:
        if NIXPKGS_LIB is None:
            self.skipTest("no copy of nixpkgs' lib: set NIXPKGS_LIB to a nixpkgs lib folder")
        if shutil.which("nix-instantiate") is None:
            self.skipTest("nix-instantiate is not installed")
        self.stub = self.mktemp() + ".nix"
        with open(self.stub, "w") as f:
            f.write(STUB_OPTIONS)

    def evaluate(self, settings: str) -> Any:
        """The module's config under ``services.nixeryd = settings``, as JSON."""
        expression = """
          let
            lib = import %(lib)s;
            evaluated = lib.evalModules { modules = [
              %(module)s %(stub)s
              { services.nixeryd = %(settings)s; }
            ]; };
            c = evaluated.config;
          in {
            service = c.systemd.services.nixeryd;
            users = c.users;
            ports = c.networking.firewall.allowedTCPPorts;
            assertions = map (a: { inherit (a) assertion message; }) c.assertions;
          }
        """ % {"lib": json.dumps(NIXPKGS_LIB), "module": MODULE, "stub": self.stub,
               "settings": settings}
        result = subprocess.run(
            ["nix-instantiate", "--eval", "--strict", "--json", "-E", expression],
            capture_output=True, text=True, timeout=120, env=self.environment())
        if result.returncode != 0:
            raise EvaluationFailed(result.stderr)
        return json.loads(result.stdout)

    def environment(self) -> dict[str, str]:
        """Nix's environment: its state kept in the test's own folder."""
        state = os.path.abspath(self.mktemp())
        env = dict(os.environ)
        env.update(NIX_STATE_DIR=os.path.join(state, "state"),
                   XDG_CACHE_HOME=os.path.join(state, "cache"),
                   NIX_REMOTE="")
        return env

    def test_minimal(self) -> None:
        """A source and a package are enough; the rest has defaults."""
        config = self.evaluate('{ enable = true; package = %s; channel = "nixos-unstable"; }'
                               % (PACKAGE,))
        service = config["service"]
        env = service["environment"]
        self.assertEqual(env["NIXERY_CHANNEL"], "nixos-unstable")
        self.assertEqual(env["PORT"], "8080")
        self.assertEqual(env["NIXERY_STORAGE_BACKEND"], "filesystem")
        self.assertEqual(env["STORAGE_PATH"], "/var/lib/nixeryd/storage")
        for unset in ("NIX_TIMEOUT", "NIXERY_MAX_BUILDS", "NIXERY_LAYER_BUDGET",
                      "NIXERY_NIX_OPTIONS", "GCS_BUCKET", "NIXERY_PKGS_PATH",
                      "NIXERY_MAX_QUEUE", "NIXERY_FAILURE_TTL", "NIXERY_HEAD_TIMEOUT",
                      "NIXERY_IDLE_TIMEOUT", "NIXERY_STALL_TIMEOUT",
                      "NIXERY_MAX_CONNECTIONS_PER_CLIENT", "NIXERY_MAX_CONNECTIONS"):
            self.assertNotIn(unset, env)
        unit = service["serviceConfig"]
        self.assertEqual(
            unit["ExecStart"],
            "/nix/store/00000000000000000000000000000000-nixeryd/bin/nixeryd serve")
        self.assertEqual(unit["User"], "nixeryd")
        self.assertEqual(unit["StateDirectory"], "nixeryd")
        self.assertEqual(unit["CacheDirectory"], "nixeryd")
        # A configuration error (exit code 2) does not heal by restarting.
        self.assertEqual((unit["Restart"], unit["RestartPreventExitStatus"]),
                         ("on-failure", 2))
        self.assertTrue(all(a["assertion"] for a in config["assertions"]))
        self.assertTrue(config["users"]["users"]["nixeryd"]["isSystemUser"])
        self.assertEqual(config["ports"], [])

    def test_every_option_reaches_the_daemon(self) -> None:
        """
        Every option is passed in the variable the daemon reads: the
        environment the module writes configures the daemon as intended.
        """
        config = self.evaluate("""{
            enable = true; package = %s; port = 5000; openFirewall = true;
            pkgsRepo = "https://git.example/pkgs.git";
            storageBackend = "gcs"; gcsBucket = "images";
            googleApplicationCredentials = "/run/keys/gcs.json";
            gcsEndpoint = "http://127.0.0.1:9023";
            nixTimeout = 300; popularityUrl = "/var/lib/pop.json";
            maxBuilds = 4; layerBudget = 60; keepBuilds = 7; buildLogLines = 50;
            maxQueue = 12; failureTtl = 0;
            headTimeout = 5; idleTimeout = 20; stallTimeout = 30;
            maxConnectionsPerClient = 16; maxConnections = 500;
            nixOptions = { substituters = ""; "max-jobs" = "2"; };
            extraArgs = [ "--threads" "8" ];
          }""" % (PACKAGE,))
        env = config["service"]["environment"]
        daemon = config_from({}, env)
        self.assertEqual(daemon.listen, "tcp:5000")
        self.assertEqual((daemon.source.kind, daemon.source.location),
                         ("repo", "https://git.example/pkgs.git"))
        self.assertEqual(daemon.storage_backend, "gcs")
        self.assertEqual(daemon.gcs_bucket, "images")
        self.assertEqual(daemon.google_credentials, "/run/keys/gcs.json")
        self.assertEqual(daemon.gcs_endpoint, "http://127.0.0.1:9023")
        self.assertEqual(daemon.nix_timeout, 300.0)
        self.assertEqual(daemon.popularity_url, "/var/lib/pop.json")
        self.assertEqual(daemon.max_builds, 4)
        self.assertEqual(daemon.layer_budget, 60)
        self.assertEqual(daemon.keep_builds, 7)
        self.assertEqual(daemon.build_log_lines, 50)
        self.assertEqual(daemon.max_queue, 12)
        self.assertEqual(daemon.failure_ttl, 0.0)
        self.assertEqual((daemon.head_timeout, daemon.idle_timeout, daemon.stall_timeout),
                         (5.0, 20.0, 30.0))
        self.assertEqual((daemon.max_connections_per_client, daemon.max_connections),
                         (16, 500))
        self.assertEqual(dict(daemon.nix_options), {"substituters": "", "max-jobs": "2"})
        self.assertNotIn("STORAGE_PATH", env)
        self.assertEqual(config["ports"], [5000])
        self.assertTrue(config["service"]["serviceConfig"]["ExecStart"].endswith(
            "/bin/nixeryd serve --threads 8"))

    def test_s3_storage_configures_the_daemon(self) -> None:
        """The s3 options reach the daemon; a key is passed as a file's path only."""
        config = self.evaluate("""{
            enable = true; package = %s; pkgsPath = "/srv/pkgs";
            storageBackend = "s3"; s3Bucket = "images";
            s3Endpoint = "http://127.0.0.1:9000"; s3Region = "auto";
            s3AddressingStyle = "virtual"; s3UrlLifetime = 60;
            s3PublicUrl = "https://cdn.example/images";
            awsSharedCredentialsFile = "/run/keys/aws"; awsProfile = "nixeryd";
          }""" % (PACKAGE,))
        env = config["service"]["environment"]
        s3 = config_from({}, env).s3
        assert s3 is not None
        self.assertEqual((s3.bucket, s3.endpoint, s3.region, s3.addressing_style,
                          s3.url_lifetime, s3.public_url),
                         ("images", "http://127.0.0.1:9000", "auto", "virtual", 60,
                          "https://cdn.example/images"))
        aws = dict(s3.aws_environment)
        self.assertEqual((aws["AWS_SHARED_CREDENTIALS_FILE"], aws["AWS_PROFILE"]),
                         ("/run/keys/aws", "nixeryd"))
        self.assertNotIn("AWS_SECRET_ACCESS_KEY", aws)
        self.assertTrue(all(a["assertion"] for a in config["assertions"]))
        missing = self.evaluate('{ enable = true; package = %s; pkgsPath = "/p";'
                                ' storageBackend = "s3"; }' % (PACKAGE,))
        self.assertEqual([a["message"] for a in missing["assertions"] if not a["assertion"]],
                         ["services.nixeryd: s3 storage needs s3Bucket."])

    def test_private_options(self) -> None:
        """The options of private instances reach the daemon; reload is SIGHUP."""
        config = self.evaluate("""{
            enable = true; package = %s; pkgsPath = "/srv/pkgs";
            htpasswd = "/etc/nixeryd/htpasswd"; authRules = "/etc/nixeryd/rules.toml";
            tokenKey = "/etc/nixeryd/token.key"; tokenPublicKey = "/etc/nixeryd/auth.pem";
            tokenRealm = "https://auth.example/token"; tokenService = "registry";
            tokenIssuer = "auth"; tokenTtl = 600;
            tlsCert = "/etc/nixeryd/tls.crt"; tlsKey = "/etc/nixeryd/tls.key";
            coldPerMinute = 10;
          }""" % (PACKAGE,))
        private = config_from({}, config["service"]["environment"]).private
        self.assertEqual(private, PrivateConfig(
            htpasswd="/etc/nixeryd/htpasswd", rules="/etc/nixeryd/rules.toml",
            token_key="/etc/nixeryd/token.key", token_public_key="/etc/nixeryd/auth.pem",
            token_realm="https://auth.example/token", token_service="registry",
            token_issuer="auth", token_ttl=600.0, tls_cert="/etc/nixeryd/tls.crt",
            tls_key="/etc/nixeryd/tls.key", cold_per_minute=10))
        self.assertIn("-HUP", config["service"]["serviceConfig"]["ExecReload"])

    def test_filesystem_storage_configures_the_daemon(self) -> None:
        """The default storage directory is what the daemon is told."""
        config = self.evaluate('{ enable = true; package = %s; pkgsPath = "/srv/pkgs"; }'
                               % (PACKAGE,))
        daemon = config_from({}, config["service"]["environment"])
        self.assertEqual(daemon.storage_path, "/var/lib/nixeryd/storage")
        self.assertEqual((daemon.source.kind, daemon.source.location), ("path", "/srv/pkgs"))

    def test_one_source_required(self) -> None:
        """No source, or two, fails an assertion that says what to set."""
        for settings in ('{ enable = true; package = %s; }',
                         '{ enable = true; package = %s; channel = "a"; pkgsPath = "/b"; }'):
            config = self.evaluate(settings % (PACKAGE,))
            failed = [a["message"] for a in config["assertions"] if not a["assertion"]]
            self.assertEqual(len(failed), 1)
            self.assertIn("exactly one of channel, pkgsRepo and pkgsPath", failed[0])

    def test_gcs_needs_bucket(self) -> None:
        """gcs storage without a bucket fails an assertion."""
        config = self.evaluate('{ enable = true; package = %s; channel = "a"; '
                               'storageBackend = "gcs"; }' % (PACKAGE,))
        failed = [a["message"] for a in config["assertions"] if not a["assertion"]]
        self.assertEqual(failed, ["services.nixeryd: gcs storage needs gcsBucket."])

    def test_types_checked(self) -> None:
        """Values outside an option's type are refused by the module system."""
        for settings, option in (('layerBudget = 200;', "layerBudget"),
                                 ('storageBackend = "s4";', "storageBackend"),
                                 ('port = 70000;', "port"),
                                 ('maxQueue = 0;', "maxQueue"),
                                 ('failureTtl = -1;', "failureTtl")):
            with self.assertRaises(EvaluationFailed) as caught:
                self.evaluate('{ enable = true; package = %s; channel = "a"; %s }'
                              % (PACKAGE, settings))
            self.assertIn("services.nixeryd." + option, str(caught.exception))


class EvaluationFailed(Exception):
    """nix-instantiate refused the expression; the message is its stderr."""


class ModuleDefaultsTests(SynchronousTestCase):
    """
    The module leaves unset options to the daemon and says the daemon's
    default in their descriptions: those must be the daemon's real
    defaults (read without Nix, so this runs everywhere).
    """

    def test_stated_defaults_are_the_daemons(self) -> None:
        from nixeryd.app import settings

        with open(MODULE) as f:
            text = " ".join(f.read().split())
        stated = re.findall(r"\(([A-Z_]+); the daemon's default is ([0-9.]+)\)", text)
        self.assertGreaterEqual(len(stated), 10)
        by_variable = {setting.variable: setting for setting in vars(settings).values()
                       if isinstance(setting, settings.Setting) and setting.variable}
        for variable, value in stated:
            with self.subTest(variable=variable):
                self.assertIn(variable, by_variable)
                self.assertEqual(float(value), float(by_variable[variable].default))

