# A package set of real binaries and libraries, for timing layer assembly.
#
# Each package copies files of the host (a Debian system with gcc and
# Python) into the store, so its closure has the size and make-up of a
# real toolchain image: compilers, shared libraries, an interpreter and
# its standard library, text data.  Sources missing on the host are
# skipped, so the set builds everywhere; its total size varies with what
# is installed (about 250 MB on Debian 12 with gcc and Python).
#
# Builders are the host's static busybox, and the sandbox must be off.
# A package refers to its dependencies by writing their store paths into
# `nix-support/bench-deps`, which gives the closure a reference graph.
#
# `nix-build bench/pkgs` builds every package; the `image` attribute
# refers to all the others and is the natural root of the closure.
#
# Packages for images that differ a little (bench/reuse.py): the `shell`
# meta-package's four (bashInteractive, coreutils, moreutils, nano),
# `deepapp` (a program over a chain of 40 libraries), `greeter` (a small
# script using one library of that chain), `pystack` (an interpreter's
# library split into one store path per module, a closure with more
# paths than an image has layers), `pyapp` (a small script using the
# interpreter), and `revision`, which changes `greeter` and `pyapp`
# alone, as a newer revision of a package set would.
{ system ? builtins.currentSystem, busybox ? "/bin/busybox", revision ? 1 }:

let
  triplet = {
    x86_64-linux = "x86_64-linux-gnu";
    aarch64-linux = "aarch64-linux-gnu";
  }.${system} or (throw "no Debian multiarch triplet is known for ${system}");

  lib = "/usr/lib/${triplet}";
  gccLib = "/usr/lib/gcc/${triplet}";

  # A package named `bench-<name>` built by a shell script that may call
  # `put <subdirectory> <source>...`: copy each existing source (globs
  # expanded, missing ones skipped) into `$out/<subdirectory>/`.
  copyHost = name: deps: body: derivation {
    name = "bench-${name}";
    inherit system;
    deps = deps;
    builder = busybox;
    args = [ "sh" "-c" ''
      set -eu
      bb=${busybox}
      put() {
        destination="$out/$1"
        shift
        $bb mkdir -p "$destination"
        for source in "$@"; do
          if [ -e "$source" ] || [ -L "$source" ]; then
            $bb cp -RP "$source" "$destination/"
          fi
        done
      }
      $bb mkdir -p "$out/nix-support"
      for dep in $deps; do
        echo "$dep" >> "$out/nix-support/bench-deps"
      done
      ${body}
    '' ];
  };

  self = rec {
    libc = copyHost "libc" [ ] ''
      put lib ${lib}/libc.so.6 ${lib}/libm.so.6 ${lib}/ld-linux*.so.* \
        ${lib}/libpthread.so.0 ${lib}/libdl.so.2 ${lib}/librt.so.1 \
        ${lib}/libresolv.so.2 ${lib}/libnss_*.so.2 ${lib}/libutil.so.1 \
        ${lib}/libanl.so.1 ${lib}/libmvec.so.1 ${lib}/libBrokenLocale.so.1
      put lib ${lib}/gconv
      put share/i18n /usr/share/i18n/charmaps
    '';

    gcc-runtime = copyHost "gcc-runtime" [ libc ] ''
      put lib ${lib}/libgcc_s.so.1 ${lib}/libstdc++.so.6* ${lib}/libgomp.so.1* \
        ${lib}/libatomic.so.1* ${lib}/libquadmath.so.0* ${lib}/libitm.so.1*
    '';

    compression = copyHost "compression" [ libc ] ''
      put lib ${lib}/libz.so.1* ${lib}/liblzma.so.5* ${lib}/libbz2.so.1* \
        ${lib}/libzstd.so.1* ${lib}/liblz4.so.1* ${lib}/libbrotli*.so.1*
    '';

    crypto = copyHost "crypto" [ libc compression ] ''
      put lib ${lib}/libcrypto.so.3 ${lib}/libssl.so.3 ${lib}/libgnutls.so.30* \
        ${lib}/libnettle.so.8* ${lib}/libhogweed.so.6* ${lib}/libgmp.so.10* \
        ${lib}/libp11-kit.so.0* ${lib}/libtasn1.so.6* ${lib}/libidn2.so.0* \
        ${lib}/libunistring.so.* ${lib}/libffi.so.8*
      put lib ${lib}/engines-3 ${lib}/ossl-modules
    '';

    support-libs = copyHost "support-libs" [ libc crypto ] ''
      put lib ${lib}/libsqlite3.so.0* ${lib}/libexpat.so.1* ${lib}/libreadline.so.8* \
        ${lib}/libncursesw.so.6* ${lib}/libtinfo.so.6* ${lib}/libuuid.so.1* \
        ${lib}/libmpdec.so.3* ${lib}/libgdbm.so.6* ${lib}/libgdbm_compat.so.4* \
        ${lib}/libdb-5*.so ${lib}/libmpfr.so.6* ${lib}/libmpc.so.3* \
        ${lib}/libisl.so.* ${lib}/libjansson.so.4* ${lib}/libcrypt.so.1*
    '';

    binutils = copyHost "binutils" [ libc compression support-libs ] ''
      for tool in as ld.bfd ld.gold objdump objcopy readelf nm strip ar \
          ranlib addr2line size strings gprof c++filt elfedit dwp; do
        put bin /usr/bin/${triplet}-$tool
      done
      put lib ${lib}/libbfd-*.so ${lib}/libopcodes-*.so ${lib}/libctf*.so.0* \
        ${lib}/libsframe.so.* ${lib}/libgprofng.so.*
    '';

    gcc-cc1 = copyHost "gcc-cc1" [ libc compression support-libs ] ''
      put libexec/gcc ${gccLib}/*/cc1
    '';

    gcc-cc1plus = copyHost "gcc-cc1plus" [ libc compression support-libs ] ''
      put libexec/gcc ${gccLib}/*/cc1plus
    '';

    gcc-lto = copyHost "gcc-lto" [ libc compression support-libs ] ''
      put libexec/gcc ${gccLib}/*/lto1 ${gccLib}/*/lto-wrapper ${gccLib}/*/liblto_plugin.so*
    '';

    gcc-support = copyHost "gcc-support" [ gcc-runtime ] ''
      for source in ${gccLib}/*/*; do
        case "$source" in
          */cc1|*/cc1plus|*/lto1|*/lto-wrapper|*/liblto_plugin.so*) ;;
          *) put lib/gcc "$source" ;;
        esac
      done
    '';

    gcc = copyHost "gcc" [ gcc-cc1 gcc-cc1plus gcc-lto gcc-support binutils ] ''
      for tool in gcc g++ cpp gcov gcov-dump gcov-tool gcc-ar gcc-nm gcc-ranlib; do
        put bin /usr/bin/${triplet}-$tool-[0-9]*
      done
    '';

    python-stdlib = copyHost "python-stdlib" [ ] ''
      put lib /usr/lib/python3.[0-9]*
    '';

    python = copyHost "python" [ libc compression crypto support-libs python-stdlib ] ''
      put bin /usr/bin/python3.[0-9]*
      put lib ${lib}/libpython3.*.so.1*
    '';

    perl = copyHost "perl" [ libc support-libs ] ''
      put bin /usr/bin/perl
      put lib ${lib}/perl-base ${lib}/libperl.so.5*
    '';

    tzdata = copyHost "tzdata" [ ] ''
      put share /usr/share/zoneinfo
    '';

    image = copyHost "image" [ gcc python perl tzdata ] "";

    bashInteractive = copyHost "bash-interactive" [ libc support-libs ] ''
      put bin /bin/bash
    '';

    coreutils = copyHost "coreutils" [ libc ] ''
      for tool in ls cat cp mv rm mkdir chmod ln sort uniq head tail wc tr cut \
          date env id stat du df touch tee sleep; do
        put bin /bin/$tool /usr/bin/$tool
      done
    '';

    moreutils = copyHost "moreutils" [ libc ] ''
      put bin /usr/bin/diff /usr/bin/cmp /usr/bin/sdiff /usr/bin/diff3
    '';

    nano = copyHost "nano" [ libc support-libs ] ''
      put bin /usr/bin/nano /bin/nano /usr/bin/less
    '';

    # `chain-1` refers to `chain-2` and so on down to `chain-40`, which
    # refers to libc; each holds one host library (a regular file).
    chain = builtins.genList (index: copyHost "chain-${toString (index + 1)}"
      (if index == 39 then [ libc ] else [ (builtins.elemAt chain (index + 1)) ]) ''
        put lib "$($bb find ${lib} -maxdepth 1 -type f -name 'lib*.so.*' | $bb sort | $bb sed -n '${toString (index * 11 + 5)}p')"
      '') 40;

    deepapp = copyHost "deepapp" [ (builtins.head chain) ] ''
      put bin /usr/bin/objdump
    '';

    greeter = copyHost "greeter-${toString revision}.0" [ (builtins.elemAt chain 19) ] ''
      $bb mkdir -p "$out/bin"
      printf '#!/bin/sh\necho "hello from greeter ${toString revision}.0"\n' > "$out/bin/greeter"
      $bb chmod +x "$out/bin/greeter"
    '';

    # One store path per entry of the interpreter's library directory,
    # sorted by name, the first 150.
    pymodules = builtins.genList (index: copyHost "py-module-${toString (index + 1)}"
      (if index == 0 then [ support-libs ] else [ ]) ''
        for directory in /usr/lib/python3.[0-9]*; do
          put lib/python "$directory/$($bb ls "$directory" | $bb sort | $bb sed -n '${toString (index + 1)}p')"
        done
      '') 150;

    pystack = copyHost "pystack" ([ python ] ++ pymodules) "";

    pyapp = copyHost "pyapp-${toString revision}.0" [ python ] ''
      $bb mkdir -p "$out/bin"
      printf '#!/bin/sh\nexec python3 -c "print(\\"pyapp ${toString revision}.0\\")"\n' > "$out/bin/pyapp"
      $bb chmod +x "$out/bin/pyapp"
    '';
  };
in
self
