#!/bin/sh
# Copies binaries and exactly the shared libraries they load (their ldd closure, the dynamic
# loader included) into a root tree DEST, so that an image can start FROM scratch with them.
# Debian's libtorch1.13 package depends on OpenCV, FFmpeg, GDAL, GStreamer and more; most of
# those packages' files (codecs' data, plugins, tools, docs) are never loaded, and this keeps
# only what the loader maps. Usage: collect-runtime.sh DEST BINARY...
set -eu
dest=$1
shift
mkdir -p "$dest/usr/local/bin" "$dest/etc" "$dest/tmp"
chmod 1777 "$dest/tmp"
for bin in "$@"; do
  install -m 0755 "$bin" "$dest/usr/local/bin/"
  # "name => /path (addr)" lines and the loader's own "/lib64/ld-linux... (addr)" line.
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
done | sort -u | while read -r lib; do
  # The file itself at its real path, and the name the loader asked for as a link to it:
  # libblas.so.3 is an alternatives link, and the daemon reads the BLAS it uses off its target.
  real=$(readlink -f "$lib")
  mkdir -p "$dest$(dirname "$real")" "$dest$(dirname "$lib")"
  [ -e "$dest$real" ] || cp "$real" "$dest$real"
  [ "$real" = "$lib" ] || [ -e "$dest$lib" ] || ln -s "$real" "$dest$lib"
done
# The loader finds every library by the paths above; a cache of exactly these directories.
for bin in "$@"; do ldd "$bin"; done | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | xargs -n1 dirname | sort -u \
  > "$dest/etc/ld.so.conf"
ldconfig -r "$dest"
# A user to run as (no shell, no home outside the workdir) and the files the C library reads.
echo "root:x:0:0:root:/root:/sbin/nologin" > "$dest/etc/passwd"
echo "spritediff:x:10001:10001:spritediff:/srv/spritediff:/sbin/nologin" >> "$dest/etc/passwd"
printf 'root:x:0:\nspritediff:x:10001:\n' > "$dest/etc/group"
echo "hosts: files dns" > "$dest/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$dest/etc/hosts"
