# Sourced by build-*.sh, never executed. Shared steps of the image builders:
# the cache stamp, the deterministic layer tarball and the image manifest.
#
# Output of every builder, in OUT_DIR:
#   layer.tar   one layer: an UNCOMPRESSED GNU tar of the root filesystem, members sorted by
#               name, mtime fixed (@0), numeric ids; ./ is the image root.
#   image.json  {"name": "<name:tag>", "layers": ["sha256:<hex of layer.tar>"], "size": <bytes of layer.tar>}
#   .stamp      sha256 of the builder's inputs; the build is skipped while it is unchanged.
# Both files appear atomically (written beside, then renamed; image.json last).

die() { echo "$(basename "$0"): $*" >&2; exit 1; }
log() { echo "$(basename "$0"): $*" >&2; }

# stamp_of WORDS... : sha256 of the given strings (one per line).
stamp_of() { printf '%s\n' "$@" | sha256sum | cut -d' ' -f1; }

# cached OUT_DIR STAMP : true if OUT_DIR holds an image built from the same inputs.
cached() {
  [ -f "$1/image.json" ] && [ -f "$1/layer.tar" ] && [ -f "$1/.stamp" ] && [ "$(cat "$1/.stamp")" = "$2" ]
}

# pack ROOTFS OUT_DIR NAME STAMP [tar options...] : writes layer.tar, image.json, .stamp.
pack() {
  local rootfs=$1 out=$2 name=$3 stamp=$4
  shift 4
  tar -C "$rootfs" --sort=name --mtime=@0 --numeric-owner --format=gnu "$@" \
    -cf "$out/.layer.tar.tmp" . || die "tar failed"
  local hex size
  hex=$(sha256sum "$out/.layer.tar.tmp" | cut -d' ' -f1)
  size=$(stat -c %s "$out/.layer.tar.tmp")
  printf '{ "name": "%s", "layers": ["sha256:%s"], "size": %s }\n' "$name" "$hex" "$size" >"$out/.image.json.tmp"
  rm -f "$out/image.json" "$out/.stamp"
  mv -f "$out/.layer.tar.tmp" "$out/layer.tar"
  mv -f "$out/.image.json.tmp" "$out/image.json"
  echo "$stamp" >"$out/.stamp"
  log "built $name sha256:$hex ($size bytes)"
}

# copy_with_libs ROOTFS BINARY... : copies binaries and the shared libraries ldd finds for
# them (and the dynamic loader) to the same paths inside ROOTFS.
copy_with_libs() {
  local rootfs=$1 bin lib
  shift
  for bin in "$@"; do
    install -D -m 0755 "$bin" "$rootfs$bin"
    for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
      [ -e "$rootfs$lib" ] && continue
      mkdir -p "$rootfs$(dirname "$lib")"
      cp -L "$lib" "$rootfs$lib"
    done
  done
}
