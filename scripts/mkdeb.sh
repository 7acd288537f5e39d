#!/usr/bin/env bash
# mkdeb.sh VERSION ARCH BINDIR MANDIR OUTDIR — build the three Debian packages
# (flotilla-scheduler, flotilla-render, flotilla-announce) for ARCH from the
# static binaries in BINDIR and the man pages in MANDIR, with dpkg-deb, into
# OUTDIR. The packages' files are under packaging/deb/<package>/:
#   root/         installed as is (everything under root/etc is a conffile)
#   dirs          extra (empty) directories to ship
#   description   Description: field (first line synopsis)
#   fields        optional control fields (Recommends:, Suggests:, …)
#   postinst prerm postrm   maintainer scripts
#   lintian-overrides       optional
# DIST_COMPRESS=fast: gzip -1 instead of xz (the tests use it).
set -euo pipefail
[ $# -eq 5 ] || { echo "usage: mkdeb.sh VERSION ARCH BINDIR MANDIR OUTDIR" >&2; exit 2; }
version=$1 arch=$2 bindir=$3 mandir=$4 out=$5
here=$(cd "$(dirname "$0")/.." && pwd)
src=$here/packaging/deb
maintainer=${DEB_MAINTAINER:-flotilla maintainers <maintainers@users.noreply.r-seed-ce6edb71.example>}
# Reproducible: every file dated from the last commit (or now outside a checkout).
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$here" log -1 --format=%ct 2>/dev/null || date +%s)}
umask 022
compress="-Zxz"
[ "${DIST_COMPRESS:-}" = fast ] && compress="-Zgzip -z1"
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for bin in scheduler render announce; do
	pkg=flotilla-$bin
	root=$work/$pkg
	mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/usr/share/doc/$pkg" "$root/usr/share/man/man1"
	[ -d "$src/$pkg/root" ] && cp -R "$src/$pkg/root/." "$root/"
	if [ -f "$src/$pkg/dirs" ]; then
		while read -r d; do [ -n "$d" ] && mkdir -p "$root/$d"; done <"$src/$pkg/dirs"
	fi
	install -m 0755 "$bindir/$bin" "$root/usr/bin/$bin"
	gzip -9n <"$mandir/$bin.1" >"$root/usr/share/man/man1/$bin.1.gz"
	install -m 0644 "$src/copyright" "$root/usr/share/doc/$pkg/copyright"
	{
		echo "$pkg ($version) unstable; urgency=medium"
		echo
		echo "  * Release $version, built from the flotilla repository."
		echo
		echo " -- $maintainer  $(date -u -R -d "@$epoch")"
	} | gzip -9n >"$root/usr/share/doc/$pkg/changelog.gz"
	if [ -f "$src/$pkg/lintian-overrides" ]; then
		install -D -m 0644 "$src/$pkg/lintian-overrides" "$root/usr/share/lintian/overrides/$pkg"
	fi
	for s in postinst prerm postrm; do
		[ -f "$src/$pkg/$s" ] && install -m 0755 "$src/$pkg/$s" "$root/DEBIAN/$s"
	done
	if [ -d "$root/etc" ]; then
		(cd "$root" && find etc -type f | sort | sed 's|^|/|') >"$root/DEBIAN/conffiles"
		[ -s "$root/DEBIAN/conffiles" ] || rm "$root/DEBIAN/conffiles"
	fi
	find "$root" -path "$root/DEBIAN" -prune -o -type f -print0 | xargs -0 chmod go-w
	(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
	size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
	desc=$(sed -n 1p "$src/$pkg/description")
	{
		sed -e "s|@PACKAGE@|$pkg|" -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" \
			-e "s|@MAINTAINER@|$maintainer|" -e "s|@SIZE@|$size|" -e '/^Description:/,$d' "$src/control.in"
		[ -f "$src/$pkg/fields" ] && cat "$src/$pkg/fields"
		echo "Description: $desc"
		sed -n '2,$p' "$src/$pkg/description"
	} >"$root/DEBIAN/control"
	find "$root" -exec touch -h -d "@$epoch" {} +
	dpkg-deb --root-owner-group $compress --build "$root" "$out/${pkg}_${version}_${arch}.deb" >/dev/null
	echo "$out/${pkg}_${version}_${arch}.deb"
done
