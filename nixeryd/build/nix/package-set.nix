# The package set a pinned source describes.
#
# `source` is the decoded JSON of nixeryd.pkgsource.PinnedSource.nix_args:
#   { kind = "path"; path = "/abs/dir"; }
#   { kind = "git"; fetchGit = { url; rev; ref or allRefs; }; }
#   { kind = "channel"; channel; url; }
# The set is imported like nixpkgs, for `system`.  When it accepts them, it
# gets an empty `config` and no `overlays`, so the user's
# ~/.config/nixpkgs cannot change what an image contains.
{ source, system }:

let
  root =
    if source.kind == "path" then /. + source.path
    else if source.kind == "git" then builtins.fetchGit source.fetchGit
    else if source.kind == "channel" then builtins.fetchTarball source.url
    else throw "nixeryd: unknown package source kind '${source.kind}'";

  function = import root;
  accepted = builtins.functionArgs function;
  pure =
    (if accepted ? config then { config = { }; } else { })
    // (if accepted ? overlays then { overlays = [ ]; } else { });
in
function ({ inherit system; } // pure)
