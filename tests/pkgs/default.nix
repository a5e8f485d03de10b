# An offline package set with the shape of nixpkgs, for the test suite.
#
# Every package is a raw `derivation` whose builder is a static busybox
# from the host (the sandbox is off), so the set builds without nixpkgs
# and without network access.
#
# `system` is the platform the packages are for.  For aarch64-linux they
# hold Debian's busybox-static for arm64 (`arm64/busybox-static.deb`,
# fetched by dev/setup) instead of the host's: real aarch64 binaries,
# unpacked by builders that run on this machine (their derivations are
# for `builtins.currentSystem`, as nixpkgs' cross-compiled packages are
# for the build machine), so an x86_64 host makes the arm64 set without
# emulation.  Other systems keep their own `system` in the derivations.
# `native` is the exception: like a nixpkgs package, its derivation is for
# the target system itself, so building it for aarch64-linux on x86_64
# needs an aarch64 builder (or `extra-platforms`).
#
# A file named `nonce` next to this one, when present, is mixed into every
# derivation, so a test can copy the set and force fresh builds.
{ system ? builtins.currentSystem, busybox ? "/bin/busybox" }:

let
  nonce =
    if builtins.pathExists ./nonce then builtins.readFile ./nonce else "";

  # The arm64 busybox, as Debian ships it.
  arm64Deb =
    if builtins.pathExists ./arm64/busybox-static.deb
    then ./arm64/busybox-static.deb
    else throw "the arm64 busybox is missing: dev/setup fetches Debian's busybox-static for arm64 into tests/pkgs/arm64";

  arm64 = system == "aarch64-linux";

  # The system of every derivation: this machine's for aarch64-linux
  # packages, which only unpack and copy files.
  buildSystem = if arm64 then builtins.currentSystem else system;

  # A derivation built by a busybox shell script.  The script runs with
  # `set -eu` and a PATH holding every busybox applet.
  mk = name: script: attrs: derivation ({
    inherit name nonce;
    system = buildSystem;
    builder = busybox;
    args = [ "sh" "-c" ''
      set -eu
      tools="$TMPDIR/.tools"
      ${busybox} mkdir -p "$tools"
      ${busybox} --install -s "$tools"
      export PATH="$tools"
      ${script}
    '' ];
  } // attrs);

  # A package holding one shell script, `$out/bin/<command>`, interpreted
  # by the busybox package (so it references it).
  script = name: command: body: mk name ''
    mkdir -p "$out/bin"
    cat > "$out/bin/${command}" <<'EOF'
    #!${pkgs.busybox}/bin/sh
    ${body}
    EOF
    chmod 0555 "$out/bin/${command}"
  '' { };

  applets = [
    "sh" "ls" "cat" "echo" "env" "mkdir" "chmod" "ln" "cp" "sleep" "true"
    "false" "id" "uname" "pwd" "rm" "mv" "head" "tail" "wc" "grep" "sed"
    "vi"
  ];

  pkgs = {
    busybox = mk "busybox-1.0" ''
      mkdir -p "$out/bin"
      ${if arm64 then ''
        dpkg-deb -x ${arm64Deb} "$TMPDIR/deb"
        cp "$TMPDIR/deb/bin/busybox" "$out/bin/busybox"
      '' else ''
        cp ${busybox} "$out/bin/busybox"
      ''}
      chmod 0555 "$out/bin/busybox"
      for applet in ${toString applets}; do
        ln -s busybox "$out/bin/$applet"
      done
    '' { };

    hello = script "hello-1.0" "hello" ''
      echo "Hello, world!"
    '';

    # A shared library used by two tools, so their closures overlap.
    libfoo = mk "libfoo-1.0" ''
      mkdir -p "$out/lib"
      echo "libfoo shared object" > "$out/lib/libfoo.so.1"
      ln -s libfoo.so.1 "$out/lib/libfoo.so"
    '' { };

    toolA = script "tool-a-1.0" "tool-a" ''
      echo "tool-a linked against ${pkgs.libfoo}/lib/libfoo.so.1"
    '';

    toolB = script "tool-b-2.0" "tool-b" ''
      echo "tool-b linked against ${pkgs.libfoo}/lib/libfoo.so.1"
    '';

    # The members of the `shell` meta-package.
    bashInteractive = script "bash-interactive-5.0" "bash" ''
      exec ${pkgs.busybox}/bin/sh "$@"
    '';

    coreutils = mk "coreutils-9.0" ''
      mkdir -p "$out/bin"
      for applet in env ls cat echo mkdir cp mv rm ln id uname true false; do
        ln -s ${pkgs.busybox}/bin/busybox "$out/bin/$applet"
      done
    '' { };

    moreutils = script "moreutils-0.67" "sponge" ''
      exec ${pkgs.busybox}/bin/cat > "$1"
    '';

    nano = script "nano-7.0" "nano" ''
      exec ${pkgs.busybox}/bin/vi "$@"
    '';

    cacert = mk "nss-cacert-3.0" ''
      mkdir -p "$out/etc/ssl/certs"
      {
        echo "-----BEGIN CERTIFICATE-----"
        echo "bm90IGEgcmVhbCBjZXJ0aWZpY2F0ZSwgb25seSBhIHRlc3QgZml4dHVyZQ=="
        echo "-----END CERTIFICATE-----"
      } > "$out/etc/ssl/certs/ca-bundle.crt"
    '' { };

    iana-etc = mk "iana-etc-20220101" ''
      mkdir -p "$out/etc"
      printf 'ip\t0\tIP\ntcp\t6\tTCP\nudp\t17\tUDP\n' > "$out/etc/protocols"
      printf 'http\t80/tcp\nhttps\t443/tcp\n' > "$out/etc/services"
    '' { };

    # Nested sets and a name that starts with a digit, as in nixpkgs.
    xorg = {
      libX11 = mk "libX11-1.8" ''
        mkdir -p "$out/lib"
        echo "libX11" > "$out/lib/libX11.so.6"
      '' { };
      notAPackage = "just a string";
    };

    python3Packages = {
      pyyaml = mk "python3.10-pyyaml-6.0" ''
        mkdir -p "$out/lib/python3.10/site-packages/yaml"
        echo "__version__ = '6.0'" > "$out/lib/python3.10/site-packages/yaml/__init__.py"
      '' { };
    };

    _7zz = script "7zz-22.01" "7zz" ''
      echo "7-Zip (z) 22.01"
    '';

    # Hard links, a read-only executable, a symlink and an empty directory,
    # for the archive determinism tests.
    hardlinks = mk "hardlinks-1.0" ''
      mkdir -p "$out/share/data" "$out/empty" "$out/bin"
      echo "the same content under two names" > "$out/share/data/first"
      ln "$out/share/data/first" "$out/share/data/second"
      printf '#!/bin/sh\necho run\n' > "$out/bin/run"
      chmod 0555 "$out/bin/run"
      ln -s ../share/data/first "$out/share/link"
    '' { };

    # A multi-output package whose default outputs are `bin` and `man`.
    multi = mk "multi-1.0" ''
      mkdir -p "$out" "$bin/bin" "$man/share/man/man1" "$dev/include"
      echo "multi" > "$bin/bin/multi"
      echo "multi(1)" > "$man/share/man/man1/multi.1"
      echo "#define MULTI 1" > "$dev/include/multi.h"
      echo "$bin" > "$out/bin-path"
    '' {
      outputs = [ "bin" "dev" "man" "out" ];
    } // { meta.outputsToInstall = [ "bin" "man" ]; };

    failing = mk "failing-1.0" ''
      echo "failing: configuring"
      echo "failing: compiling"
      echo "failing: error: this package never builds" >&2
      exit 1
    '' { };

    # Depends on `failing`, so its build fails in a dependency.
    needsFailing = script "needs-failing-1.0" "needs-failing" ''
      echo ${pkgs.failing}
    '';

    slow = mk "slow-1.0" ''
      echo "slow: builder pid $$"
      sleep 600 &
      echo "slow: sleeper pid $!"
      wait
      mkdir -p "$out"
    '' { };

    # Prints a numbered line every 0.3 s for about 5 s, then succeeds: a
    # build whose log can be watched as it grows.
    ticker = mk "ticker-1.0" ''
      i=1
      while [ "$i" -le 16 ]; do
        echo "ticker: line $i"
        sleep 0.3
        i=$((i + 1))
      done
      mkdir -p "$out"
      echo "ticked $((i - 1)) times" > "$out/ticker"
    '' { };

    noisy = mk "noisy-1.0" ''
      i=0
      line="noisy: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
      while [ "$i" -lt 12000 ]; do
        echo "$line $i" >&2
        i=$((i + 1))
      done
      mkdir -p "$out"
      echo done > "$out/noisy"
    '' { };

    # A derivation for the target system itself, as nixpkgs' packages are:
    # for aarch64-linux, Nix on x86_64 refuses to build it without an
    # aarch64 builder or `extra-platforms`.
    native = mk "native-1.0" ''
      mkdir -p "$out"
      echo ${system} > "$out/system"
    '' { system = system; };

    broken = throw "broken: this package was removed from the set";

    # Like a nixpkgs package whose meta check fails: the attribute is a
    # derivation, but its store paths throw when asked for.
    brokenpkg =
      let
        drv = mk "brokenpkg-1.0" ''
          mkdir -p "$out"
        '' { };
        meta = { broken = true; };
        handled =
          if meta.broken
          then throw "Package 'brokenpkg-1.0' is marked as broken, refusing to evaluate."
          else true;
        package = drv // {
          inherit meta;
          drvPath = assert handled; drv.drvPath;
          outPath = assert handled; drv.outPath;
          out = package;
        };
      in
      package;

    # Like a nixpkgs package with an unfree license, which nixpkgs refuses
    # to evaluate unless allowUnfree is set.
    unfreepkg =
      let
        drv = mk "unfreepkg-1.0" ''
          mkdir -p "$out"
        '' { };
        meta = { license = { shortName = "unfree"; free = false; }; };
        handled =
          if !meta.license.free
          then throw "Package ‘unfreepkg-1.0’ has an unfree license (‘unfree’), refusing to evaluate."
          else true;
        package = drv // {
          inherit meta;
          drvPath = assert handled; drv.drvPath;
          outPath = assert handled; drv.outPath;
          out = package;
        };
      in
      package;

    # Like a nixpkgs alias of a removed package.
    removedpkg = throw "removedpkg has been removed: use hello";
  };
in
pkgs
