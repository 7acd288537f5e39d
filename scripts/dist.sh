#!/usr/bin/env bash
# dist.sh VERSION OUTDIR — a release: static binaries (CGO_ENABLED=0) for
# linux/amd64 and linux/arm64 with VERSION stamped in (--version), a tarball
# per architecture, man pages, the Debian packages (scripts/mkdeb.sh) and
# SHA256SUMS over all of them. DIST_ARCHES limits the architectures;
# DIST_COMPRESS=fast trades size for time (gzip -1; the tests use it).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: dist.sh VERSION OUTDIR" >&2; exit 2; }
version=$1 out=$2
if ! [[ $version =~ ^[0-9][A-Za-z0-9.+~]*$ ]]; then
	echo "dist: VERSION $version: must start with a digit and hold only letters, digits and . + ~ (a Debian version)" >&2
	exit 2
fi
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
go=${GO:-go}
mkdir -p "$out"
out=$(cd "$out" && pwd)
vpkg=github.com/flotilla/flotilla/internal/version
ldflags="-s -w -X $vpkg.version=$version"
# The commit from git as well: the go command does not stamp it in a worktree.
if rev=$(git rev-parse HEAD 2>/dev/null); then
	ldflags+=" -X $vpkg.commit=$rev"
	[ -z "$(git status --porcelain 2>/dev/null)" ] || ldflags+=" -X $vpkg.modified=true"
fi
arches=${DIST_ARCHES:-amd64 arm64}
for arch in $arches; do
	d=$out/flotilla_${version}_linux_$arch
	rm -rf "$d" && mkdir -p "$d"
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch "$go" build -trimpath -ldflags "$ldflags" -o "$d/" ./cmd/announce ./cmd/render ./cmd/scheduler
	gz="gzip -9n"
	[ "${DIST_COMPRESS:-}" = fast ] && gz="gzip -1n"
	tar -C "$out" --owner=0 --group=0 --numeric-owner -I "$gz" -cf "$d.tar.gz" "$(basename "$d")"
done
# Man pages come from the binaries' own --help: run the ones this machine can run.
host=$("$go" env GOHOSTARCH)
mandir=$out/man
mkdir -p "$mandir"
hostbin=$out/flotilla_${version}_linux_$host
[ -d "$hostbin" ] || { hostbin=$out/.host && CGO_ENABLED=0 "$go" build -trimpath -ldflags "$ldflags" -o "$hostbin/" ./cmd/announce ./cmd/render ./cmd/scheduler; }
for bin in announce render scheduler; do
	scripts/manpage.sh "$hostbin/$bin" "$version" >"$mandir/$bin.1"
done
rm -rf "$out/.host"
for arch in $arches; do
	scripts/mkdeb.sh "$version" "$arch" "$out/flotilla_${version}_linux_$arch" "$mandir" "$out" >/dev/null
done
(cd "$out" && sha256sum -- *"_${version}_"*.deb flotilla_"${version}"_linux_*.tar.gz flotilla_"${version}"_linux_*/* >SHA256SUMS)
echo "dist: $out"
ls -1 "$out"
