#!/usr/bin/env bash
# image.sh VERSION BINDIR [TAG] — build flotilla's container image (FROM
# scratch, user 65532, packaging/Dockerfile) from the linux static binaries in
# BINDIR. TAG defaults to flotilla:VERSION (+ and ~ made -). Prints the tag.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: image.sh VERSION BINDIR [TAG]" >&2; exit 2; }
version=$1 bindir=$2
tag=${3:-flotilla:$(printf '%s' "$version" | tr '+~' '--')}
here=$(cd "$(dirname "$0")/.." && pwd)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
for b in announce render scheduler; do install -m 0755 "$bindir/$b" "$ctx/$b"; done
mkdir -p "$ctx/var/lib/flotilla" "$ctx/tmp"
chmod 1777 "$ctx/tmp"
cp "$here/packaging/Dockerfile" "$ctx/"
docker build -q --build-arg "VERSION=$version" -t "$tag" "$ctx" >/dev/null
echo "$tag"
