# Resolves the package names of an image against a package set.
#
# Called by nixeryd as
#   nix-instantiate --eval --strict --json resolve.nix \
#     --argstr source '<JSON>' --argstr packages '<JSON list>' \
#     --argstr optional '<JSON list>' --argstr system x86_64-linux
# Every argument is a string decoded with builtins.fromJSON; nothing the
# client wrote is ever spliced into Nix source.
#
# A name is a dotted attribute path (`xorg.libX11`).  Each component is
# looked up exactly first, then, when it starts with a digit, with a `_`
# prefix (`7zz` is `_7zz`), then case-insensitively among the attribute
# names of that level (registry names are lowercase, so `xorg.libx11`
# finds `xorg.libX11`).  The value found must be a derivation.
#
# Looking a name up and describing what it finds run under
# builtins.tryEval, so a package that throws (a removed alias, or a
# broken, unfree or insecure package whose meta check fails) is reported
# by name instead of aborting the evaluation.  tryEval catches only
# `throw` and failed `assert`s; other evaluation errors still abort.
#
# `optional` names are added when the set has them and they evaluate;
# they are never reported.
#
# The result is either
#   { unknown = [ <names> ]; unusable = [ <names> ]; packages = [ ]; }
# when some requested names are not packages (`unknown`) or throw when
# evaluated (`unusable`), both as requested, or
#   { unknown = [ ]; unusable = [ ]; packages = [ { requested;
#       attr = [ ... ]; drvPath; outputs = { <name> = <store path>; }; } ]; }
# where `outputs` are the default outputs: the one selected when the path
# names an output (`foo.man`), else `meta.outputsToInstall`, else the
# derivation's own output.
#
# With `--argstr strict <name>`, only that name is looked up and
# described, without tryEval, so the evaluation fails with Nix's own
# error for it; nixeryd uses this to explain an unusable package.
{ source, packages ? "[]", optional ? "[]", system, strict ? null }:

let
  pkgs = import ./package-set.nix {
    source = builtins.fromJSON source;
    inherit system;
  };
  requested = builtins.fromJSON packages;
  optionalNames = builtins.fromJSON optional;

  upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M"
            "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];
  lower = [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m"
            "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  toLower = builtins.replaceStrings upper lower;

  isDerivation = value:
    builtins.isAttrs value && (value.type or null) == "derivation";

  last = list: builtins.elemAt list (builtins.length list - 1);

  components = name: builtins.filter builtins.isString (builtins.split "\\." name);

  # { <lowercased name> = <name>; } for the attribute names of a set.  When
  # two names fold together, the first in sorted order wins.
  foldedNames = set: builtins.listToAttrs (map
    (name: { name = toLower name; value = name; })
    (builtins.attrNames set));

  topFolded = foldedNames pkgs;

  # The attribute name of `set` that `component` refers to, or null.
  lookup = set: folded: component:
    let
      candidates = [ component ]
        ++ (if builtins.match "[0-9].*" component != null
            then [ "_${component}" ] else [ ]);
      exact = builtins.filter (name: set ? ${name}) candidates;
      insensitive = builtins.filter (name: folded ? ${name}) (map toLower candidates);
    in
    if exact != [ ] then builtins.head exact
    else if insensitive != [ ] then folded.${builtins.head insensitive}
    else null;

  # Walks the components of `name`: { attr; value; } or null.
  resolve = name:
    let
      walk = found: rest:
        if rest == [ ] then found
        else if !(builtins.isAttrs found.value) then null
        else
          let
            folded = if found.attr == [ ] then topFolded else foldedNames found.value;
            next = lookup found.value folded (builtins.head rest);
          in
          if next == null then null
          else walk {
            attr = found.attr ++ [ next ];
            value = found.value.${next};
            parent = found.value;
          } (builtins.tail rest);
      result = walk { attr = [ ]; value = pkgs; parent = null; } (components name);
    in
    if result != null && result.attr != [ ] && isDerivation result.value
    then result else null;

  defaultOutputs = found:
    let
      drv = found.value;
      outputs = drv.outputs or [ "out" ];
      selected = drv.outputName or "out";
      namesOutput = builtins.length found.attr > 1
        && isDerivation found.parent
        && last found.attr == selected;
      wanted = builtins.filter (output: builtins.elem output outputs)
        (drv.meta.outputsToInstall or [ ]);
    in
    if namesOutput then [ selected ]
    else if wanted != [ ] then wanted
    else [ selected ];

  describe = entry: {
    requested = entry.name;
    attr = entry.found.attr;
    drvPath = entry.found.value.drvPath;
    outputs = builtins.listToAttrs (map
      (output: { name = output; value = entry.found.value.${output}.outPath; })
      (defaultOutputs entry.found));
  };

  # { name; found; usable; description; } for a name: `usable` is false
  # when its lookup or its description throws; otherwise `found` is null
  # when the name is not a package, and `description` is what `describe`
  # gives when it is one.
  examine = name:
    let
      lookedUp = builtins.tryEval (resolve name);
      found = if lookedUp.success then lookedUp.value else null;
      description = describe { inherit name found; };
      described = builtins.tryEval (builtins.deepSeq description description);
    in
    if !lookedUp.success then { inherit name; found = null; usable = false; }
    else if found == null then { inherit name found; usable = true; }
    else if !described.success then { inherit name found; usable = false; }
    else { inherit name found; usable = true; description = described.value; };

  requestedEntries = map examine requested;
  unknown = map (entry: entry.name) (builtins.filter
    (entry: entry.usable && entry.found == null) requestedEntries);
  unusable = map (entry: entry.name)
    (builtins.filter (entry: !entry.usable) requestedEntries);
  optionalEntries = builtins.filter (entry: entry.usable && entry.found != null)
    (map examine optionalNames);

  # One entry per attribute path, requested names first.
  addNew = chosen: entry:
    if builtins.elem entry.found.attr (map (other: other.found.attr) chosen)
    then chosen else chosen ++ [ entry ];
  chosen = builtins.foldl' addNew [ ] (requestedEntries ++ optionalEntries);

  strictFound = resolve strict;
  strictDescription = describe { name = strict; found = strictFound; };
in
if strict != null then
  (if strictFound == null then null
   else builtins.deepSeq strictDescription strictDescription)
else if unknown != [ ] || unusable != [ ] then
  { inherit unknown unusable; packages = [ ]; }
else
  { unknown = [ ]; unusable = [ ]; packages = map (entry: entry.description) chosen; }
