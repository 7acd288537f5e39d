#!/usr/bin/env bash
# manpage.sh BINARY VERSION — print a man page (roff) for one flotilla command,
# made from its own --help (and, for scheduler, `serve --help`), so the page
# says what the binary does.
set -euo pipefail
bin=$1 version=$2
name=$(basename "$bin")
case $name in
scheduler) what="systemd units scheduled across machines through etcd" ;;
render) what="render confd template resources from etcd" ;;
announce) what="register a service in etcd under a TTL lease" ;;
*) what="a flotilla command" ;;
esac
esc() { sed -e 's/\\/\\e/g' -e 's/^[.'"'"']/\\\&&/'; }
echo ".TH ${name^^} 1 \"\" \"flotilla $version\" \"flotilla\""
echo ".SH NAME"
echo "$name \\- $what"
echo ".SH DESCRIPTION"
echo ".nf"
"$bin" --help 2>&1 | esc
if [ "$name" = scheduler ]; then
	echo ".fi"
	echo ".SH SERVE"
	echo ".nf"
	"$bin" serve --help 2>&1 | esc
fi
echo ".fi"
echo ".SH SEE ALSO"
echo "docs/deploy.md in the flotilla repository."
