#!/usr/bin/env bash
# Builds build/slipstream_<version>_<arch>.deb from a built binary, with the
# files in scripts/deb/ and the one systemd unit scripts/slipstream.service.
# Depends on shared libraries come from dpkg-shlibdeps, not from a list here.
#
#   scripts/deb.sh BINARY VERSION        (make deb runs it)
#
# DEB_MAINTAINER="Name <address>" names who builds the package for
# distribution; the default has no real address (lintian says so).
set -euo pipefail

bin=${1:?usage: scripts/deb.sh BINARY VERSION}
version=${2:?usage: scripts/deb.sh BINARY VERSION}
root_dir=$(cd "$(dirname "$0")/.." && pwd)
src="$root_dir/scripts/deb"
arch=$(dpkg --print-architecture)
out="$root_dir/build/slipstream_${version}_${arch}.deb"
work="$root_dir/build/deb"
pkg="$work/root"
# Reproducible: every timestamp is the last commit's (or now outside git).
maintainer=${DEB_MAINTAINER:-slipstream developers <slipstream@localhost>}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root_dir" log -1 --format=%ct 2>/dev/null || date +%s)}

rm -rf "$work"
mkdir -p "$pkg/DEBIAN"
install -D -m 0755 "$bin" "$pkg/usr/bin/slipstream"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$pkg/usr/bin/slipstream"
install -D -m 0644 "$root_dir/scripts/slipstream.service" "$pkg/lib/systemd/system/slipstream.service"
install -D -m 0644 "$src/slipstream.ini" "$pkg/etc/slipstream/slipstream.ini"

doc="$pkg/usr/share/doc/slipstream"
install -D -m 0644 "$src/copyright" "$doc/copyright"
date_rfc=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
sed -e "s/@VERSION@/$version/" -e "s/@DATE@/$date_rfc/" -e "s|@MAINTAINER@|$maintainer|" "$src/changelog" > "$doc/changelog"
install -m 0644 "$root_dir/README.md" "$doc/README.md"
gzip -9n "$doc/changelog" "$doc/README.md"
man="$pkg/usr/share/man/man1"
mkdir -p "$man"
sed -e "s/@VERSION@/$version/" "$src/slipstream.1" > "$man/slipstream.1"
gzip -9n "$man/slipstream.1"

# Shared-library dependencies, as dpkg-shlibdeps computes them (it wants a
# debian/control to read; a minimal one in the work directory).
mkdir -p "$work/debian"
printf 'Source: slipstream\n\nPackage: slipstream\nArchitecture: any\n' > "$work/debian/control"
shlibs=$(cd "$work" && dpkg-shlibdeps -O "root/usr/bin/slipstream" 2>/dev/null |
         sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "deb.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    -e "s/@SHLIBS@/$shlibs/" -e "s|@MAINTAINER@|$maintainer|" "$src/control.in" > "$pkg/DEBIAN/control"
install -m 0644 "$src/conffiles" "$pkg/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "$src/$s" "$pkg/DEBIAN/$s"; done
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
 xargs -0 md5sum > DEBIAN/md5sums)
chmod 0644 "$pkg/DEBIAN/md5sums"
find "$pkg" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

dpkg-deb --root-owner-group -Zxz --build "$pkg" "$out" >/dev/null
echo "$out"
