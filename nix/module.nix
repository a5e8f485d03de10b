# NixOS module for nixeryd: a container registry that builds images from
# Nix packages on demand.
#
#   imports = [ ./nix/module.nix ];
#   services.nixeryd = {
#     enable = true;
#     package = pkgs.nixeryd;          # however the package is provided
#     channel = "nixos-unstable";
#   };
#
# Every option maps to one of the daemon's environment variables (see
# README.md); an option left at null leaves its variable unset, so the
# daemon's own default applies.
{ config, lib, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf types;
  cfg = config.services.nixeryd;

  # Options whose value is null are not passed at all.
  optional = name: value: lib.optionalAttrs (value != null) { ${name} = toString value; };

  environment =
    { PORT = toString cfg.port; }
    // optional "NIXERY_CHANNEL" cfg.channel
    // optional "NIXERY_PKGS_REPO" cfg.pkgsRepo
    // optional "NIXERY_PKGS_PATH" cfg.pkgsPath
    // { NIXERY_STORAGE_BACKEND = cfg.storageBackend; }
    // lib.optionalAttrs (cfg.storageBackend == "filesystem") {
      STORAGE_PATH = cfg.storagePath;
    }
    // optional "GCS_BUCKET" cfg.gcsBucket
    // optional "GOOGLE_APPLICATION_CREDENTIALS" cfg.googleApplicationCredentials
    // optional "STORAGE_EMULATOR_HOST" cfg.gcsEndpoint
    // optional "S3_BUCKET" cfg.s3Bucket
    // optional "S3_ENDPOINT" cfg.s3Endpoint
    // optional "S3_REGION" cfg.s3Region
    // optional "S3_ADDRESSING_STYLE" cfg.s3AddressingStyle
    // optional "S3_URL_LIFETIME" cfg.s3UrlLifetime
    // optional "S3_PUBLIC_URL" cfg.s3PublicUrl
    // optional "AWS_SHARED_CREDENTIALS_FILE" cfg.awsSharedCredentialsFile
    // optional "AWS_PROFILE" cfg.awsProfile
    // lib.optionalAttrs cfg.gcsPublic { GCS_PUBLIC = "1"; }
    // optional "GCS_SIGNING_ACCOUNT" cfg.gcsSigningAccount
    // optional "NIX_TIMEOUT" cfg.nixTimeout
    // optional "NIX_POPULARITY_URL" cfg.popularityUrl
    // optional "NIXERY_MAX_BUILDS" cfg.maxBuilds
    // optional "NIXERY_LAYER_BUDGET" cfg.layerBudget
    // optional "NIXERY_KEEP_BUILDS" cfg.keepBuilds
    // optional "NIXERY_BUILD_LOG_LINES" cfg.buildLogLines
    // optional "NIXERY_MAX_QUEUE" cfg.maxQueue
    // optional "NIXERY_FAILURE_TTL" cfg.failureTtl
    // optional "NIXERY_HEAD_TIMEOUT" cfg.headTimeout
    // optional "NIXERY_IDLE_TIMEOUT" cfg.idleTimeout
    // optional "NIXERY_STALL_TIMEOUT" cfg.stallTimeout
    // optional "NIXERY_MAX_CONNECTIONS_PER_CLIENT" cfg.maxConnectionsPerClient
    // optional "NIXERY_MAX_CONNECTIONS" cfg.maxConnections
    // lib.optionalAttrs (cfg.platforms != [ ]) {
      NIXERY_PLATFORMS = lib.concatStringsSep "," cfg.platforms;
    }
    # Private instances: authentication, tokens, rules, TLS, builds per client.
    // optional "NIXERY_HTPASSWD" cfg.htpasswd
    // optional "NIXERY_AUTH_RULES" cfg.authRules
    // optional "NIXERY_TOKEN_KEY" cfg.tokenKey
    // optional "NIXERY_TOKEN_PUBLIC_KEY" cfg.tokenPublicKey
    // optional "NIXERY_TOKEN_REALM" cfg.tokenRealm
    // optional "NIXERY_TOKEN_SERVICE" cfg.tokenService
    // optional "NIXERY_TOKEN_ISSUER" cfg.tokenIssuer
    // optional "NIXERY_TOKEN_TTL" cfg.tokenTtl
    // optional "NIXERY_TLS_CERT" cfg.tlsCert
    // optional "NIXERY_TLS_KEY" cfg.tlsKey
    // optional "NIXERY_COLD_PER_MINUTE" cfg.coldPerMinute
    // lib.optionalAttrs (cfg.nixOptions != { }) {
      NIXERY_NIX_OPTIONS = lib.concatStringsSep ";"
        (lib.mapAttrsToList (name: value: "${name}=${value}") cfg.nixOptions);
    }
    // {
      # Nix's own caches (the git fetcher's among them) go to the cache
      # directory: the home directory is not writable under the hardening.
      XDG_CACHE_HOME = "/var/cache/nixeryd";
      HOME = "/var/lib/nixeryd";
    };

  sources = lib.filter (value: value != null) [ cfg.channel cfg.pkgsRepo cfg.pkgsPath ];
in
{
  options.services.nixeryd = {
    enable = mkEnableOption "nixeryd, a container registry that builds images from Nix packages";

    package = mkOption {
      type = types.package;
      description = "The nixeryd package; its bin/nixeryd is run.";
    };

    port = mkOption {
      type = types.port;
      default = 8080;
      description = "TCP port to serve the registry on (PORT).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the port in the firewall.";
    };

    channel = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "nixos-unstable";
      description = "nixpkgs channel or commit to take packages from (NIXERY_CHANNEL).";
    };

    pkgsRepo = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "https://git.example/packages.git";
      description = "Git repository of a package set; the image tag selects the ref (NIXERY_PKGS_REPO).";
    };

    pkgsPath = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Local directory of a package set (NIXERY_PKGS_PATH).";
    };

    storageBackend = mkOption {
      type = types.enum [ "filesystem" "gcs" "s3" ];
      default = "filesystem";
      description = "Where images are stored (NIXERY_STORAGE_BACKEND).";
    };

    storagePath = mkOption {
      type = types.str;
      default = "/var/lib/nixeryd/storage";
      description = "Directory of filesystem storage (STORAGE_PATH).";
    };

    gcsBucket = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Bucket of gcs storage (GCS_BUCKET).";
    };

    googleApplicationCredentials = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = ''
        Path of a service-account key file for GCS and URL signing
        (GOOGLE_APPLICATION_CREDENTIALS). A path, so that the key never
        enters the Nix store.
      '';
    };

    gcsEndpoint = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "A GCS emulator's URL instead of Cloud Storage (STORAGE_EMULATOR_HOST).";
    };

    s3Bucket = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Bucket of s3 storage (S3_BUCKET).";
    };

    s3Endpoint = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "An S3-compatible server's URL (MinIO, Ceph, R2...); null for AWS S3 (S3_ENDPOINT).";
    };

    s3Region = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Region requests to the bucket are signed for (S3_REGION; the daemon's default is us-east-1).";
    };

    s3AddressingStyle = mkOption {
      type = types.nullOr (types.enum [ "path" "virtual" ]);
      default = null;
      description = "path or virtual (S3_ADDRESSING_STYLE; virtual on AWS for a bucket name without dots, capitals or underscores, path otherwise and with s3Endpoint by default).";
    };

    s3UrlLifetime = mkOption {
      type = types.nullOr (types.ints.between 1 604800);
      default = null;
      description = "Seconds a presigned blob URL is valid (S3_URL_LIFETIME; the daemon's default is 300).";
    };

    s3PublicUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Where the bucket's objects are readable without credentials; blobs are redirected there unsigned (S3_PUBLIC_URL).";
    };

    awsSharedCredentialsFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = ''
        Path of an AWS shared credentials file for s3 storage
        (AWS_SHARED_CREDENTIALS_FILE). A path, so that the key never enters
        the Nix store; without it, credentials come from the instance or
        container metadata.
      '';
    };

    awsProfile = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Profile of the shared credentials file (AWS_PROFILE; default).";
    };

    gcsPublic = mkOption {
      type = types.bool;
      default = false;
      description = "Redirect blob requests to plain, unsigned URLs of a public bucket (GCS_PUBLIC).";
    };

    gcsSigningAccount = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = ''
        Without a key file, the service account that signs blob URLs through
        IAM signBlob (GCS_SIGNING_ACCOUNT; by default the metadata server's
        default account).
      '';
    };

    nixTimeout = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Seconds each Nix step of an image may take (NIX_TIMEOUT; the daemon's default is 600).";
    };

    popularityUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "File or URL of package popularity data (NIX_POPULARITY_URL).";
    };

    maxBuilds = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Concurrent Nix builds (NIXERY_MAX_BUILDS; the daemon's default is 2).";
    };

    layerBudget = mkOption {
      type = types.nullOr (types.ints.between 1 125);
      default = null;
      description = "Store-path layers per image (NIXERY_LAYER_BUDGET; the daemon's default is 94).";
    };

    keepBuilds = mkOption {
      type = types.nullOr types.ints.unsigned;
      default = null;
      description = "Finished builds whose pages and logs are kept (NIXERY_KEEP_BUILDS; the daemon's default is 100).";
    };

    buildLogLines = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Nix log lines kept per build (NIXERY_BUILD_LOG_LINES; the daemon's default is 2000).";
    };

    platforms = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "linux/amd64" "linux/arm64" ];
      description = ''
        Platforms a name is built for, the default first; with several, a
        pull by tag gets an image index (NIXERY_PLATFORMS; the daemon's
        default is the machine's own platform).  Nix must be able to build
        for each: see nixOptions (builders, extra-platforms, substituters).
      '';
    };

    maxQueue = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = ''
        Images in the making at once, running or waiting; one client address
        may have a quarter of them, and cold pulls beyond are answered 429
        with Retry-After (NIXERY_MAX_QUEUE; the daemon's default is 32).
      '';
    };

    failureTtl = mkOption {
      type = types.nullOr types.ints.unsigned;
      default = null;
      description = ''
        Seconds an unknown package or a failed build is answered from memory
        without asking Nix again, 0 for never (NIXERY_FAILURE_TTL; the
        daemon's default is 300).
      '';
    };

    # Private instances (README.md, "Private instances"): every file is
    # read by the service's user; give paths outside the Nix store for
    # secrets (keys, htpasswd).
    htpasswd = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "htpasswd file of bcrypt hashes (htpasswd -B); pulls need a user name and password (NIXERY_HTPASSWD).";
    };

    authRules = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "TOML rules file: which users may pull which packages (NIXERY_AUTH_RULES).";
    };

    tokenKey = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "PEM private key (RSA or EC P-256) signing the tokens of the daemon's /token endpoint; turns on the token flow (NIXERY_TOKEN_KEY).";
    };

    tokenPublicKey = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "PEM public key or certificate of an external token service (NIXERY_TOKEN_PUBLIC_KEY; needs tokenRealm).";
    };

    tokenRealm = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "URL of the token service clients are sent to (NIXERY_TOKEN_REALM; the daemon's default is its own /token).";
    };

    tokenService = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Service name (audience) of the tokens (NIXERY_TOKEN_SERVICE; the daemon's default is nixeryd).";
    };

    tokenIssuer = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Issuer of the tokens (NIXERY_TOKEN_ISSUER; the daemon's default is nixeryd).";
    };

    tokenTtl = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Seconds a token of the daemon's /token lasts (NIXERY_TOKEN_TTL; the daemon's default is 300).";
    };

    tlsCert = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "PEM certificate (then intermediates) to serve HTTPS with; read again on reload (NIXERY_TLS_CERT).";
    };

    tlsKey = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "PEM private key of tlsCert (NIXERY_TLS_KEY).";
    };

    coldPerMinute = mkOption {
      type = types.nullOr types.ints.unsigned;
      default = null;
      description = "Builds one user (or address) may start per minute, 0 for no bound (NIXERY_COLD_PER_MINUTE; the daemon's default is 60).";
    };

    headTimeout = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Seconds a client has to send a whole request (NIXERY_HEAD_TIMEOUT; the daemon's default is 10).";
    };

    idleTimeout = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Seconds a kept-alive connection waits for the next request (NIXERY_IDLE_TIMEOUT; the daemon's default is 30).";
    };

    stallTimeout = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Seconds a response may wait for its client to read before the connection is dropped (NIXERY_STALL_TIMEOUT; the daemon's default is 60).";
    };

    maxConnectionsPerClient = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Connections one client address may hold (NIXERY_MAX_CONNECTIONS_PER_CLIENT; the daemon's default is 64).";
    };

    maxConnections = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Connections from all clients, at most what the open-file limit carries (NIXERY_MAX_CONNECTIONS; by default that, 32624 with LimitNOFILE 65536).";
    };

    nixOptions = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = { substituters = ""; };
      description = "Extra Nix options, passed as --option NAME VALUE (NIXERY_NIX_OPTIONS).";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--threads" "8" ];
      description = "Further command-line options of the daemon.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = lib.length sources == 1;
        message = "services.nixeryd: set exactly one of channel, pkgsRepo and pkgsPath.";
      }
      {
        assertion = cfg.storageBackend != "gcs" || cfg.gcsBucket != null;
        message = "services.nixeryd: gcs storage needs gcsBucket.";
      }
      {
        assertion = cfg.storageBackend != "s3" || cfg.s3Bucket != null;
        message = "services.nixeryd: s3 storage needs s3Bucket.";
      }
      {
        assertion = (cfg.tlsCert == null) == (cfg.tlsKey == null);
        message = "services.nixeryd: TLS needs both tlsCert and tlsKey.";
      }
    ];

    users.users.nixeryd = {
      isSystemUser = true;
      group = "nixeryd";
      home = "/var/lib/nixeryd";
      description = "nixeryd container registry";
    };
    users.groups.nixeryd = { };

    networking.firewall.allowedTCPPorts = lib.optional cfg.openFirewall cfg.port;

    systemd.services.nixeryd = {
      description = "nixeryd container registry building images from Nix";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" "nix-daemon.socket" ];
      wants = [ "network-online.target" ];
      inherit environment;
      serviceConfig = {
        ExecStart = lib.escapeShellArgs ([ "${cfg.package}/bin/nixeryd" "serve" ] ++ cfg.extraArgs);
        # SIGHUP reads the TLS certificate and key again, without dropping connections.
        ExecReload = "/run/current-system/sw/bin/kill -HUP $MAINPID";
        User = "nixeryd";
        Group = "nixeryd";
        StateDirectory = "nixeryd";
        CacheDirectory = "nixeryd";
        Restart = "on-failure";
        RestartSec = "2s";
        # Exit code 2 is a configuration error: it does not heal by restarting.
        RestartPreventExitStatus = 2;
        TimeoutStopSec = "30s";
        # Descriptors for many concurrent clients and open blob files: the
        # daemon raises its soft limit to this and allows 32624 connections.
        LimitNOFILE = 65536;
        # The daemon never needs new privileges; Nix builds go through the daemon.
        NoNewPrivileges = true;
        # /usr, /boot and /etc read-only; the store is written by nix-daemon, not us.
        ProtectSystem = "strict";
        # Homes are not ours to read; git and Nix caches live in CacheDirectory.
        ProtectHome = true;
        # A private /tmp: Nix's temporary files stay with the service.
        PrivateTmp = true;
        # No device nodes beyond the basic ones.
        PrivateDevices = true;
        # The kernel's tunables, modules and logs are not ours.
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        # IPv4/IPv6 for clients and fetchers, Unix sockets for the Nix daemon.
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        LockPersonality = true;
        # Files it creates are readable by others (blobs are public content).
        UMask = "0022";
        # Filesystem storage outside the state directory must stay writable.
        ReadWritePaths = lib.optional (cfg.storageBackend == "filesystem") "-${cfg.storagePath}";
      };
    };
  };
}
