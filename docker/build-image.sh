#!/bin/sh
# Everything the Docker image does, as a script the test suite runs too
# (tests/integration/test_docker_image.py: no Docker engine is needed to
# check the image's configuration). The Dockerfile only calls it.
#
#   build-image.sh build SRC OUT     build the Debian package from SRC into OUT,
#                                    with the files the other steps need
#   build-image.sh install OUT       install that package and configure /
#   build-image.sh configure ROOT    write the default config, the password
#                                    file and the state directory under ROOT
#
# Passwords: TALLY_BRIDGE_PASSWORD, TALLY_ADMIN_PASSWORD, ... (see
# conf/secure/make-passwords.sh); each defaults to its demo password.
set -eu

here=$(cd "$(dirname "$0")" && pwd)

build() {
	src=$1 out=$2
	export DEBIAN_FRONTEND=noninteractive
	# Node.js from Debian, unless one is there already (NodeSource's nodejs
	# has npm inside and conflicts with Debian's npm).
	node=
	command -v node >/dev/null || node=nodejs
	command -v npm >/dev/null || node="$node npm"
	apt-get update -q
	# shellcheck disable=SC2086 # $node is a list of words
	apt-get install -y -q --no-install-recommends build-essential debhelper cmake pkg-config \
		python3 libmosquitto-dev mosquitto-dev libcjson-dev uthash-dev zlib1g-dev \
		libmicrohttpd-dev $node
	(cd "$src" && rm -rf build obj-* clients/web/dist && dpkg-buildpackage -us -uc -b)
	mkdir -p "$out"
	cp "$src"/../tally_*.deb "$src/docker/build-image.sh" "$src/docker/mosquitto.conf" \
		"$src/conf/secure/make-passwords.sh" "$out/"
}

install_package() {
	out=$1
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "$out"/tally_*.deb
	rm -rf /var/lib/apt/lists/*
	configure /
}

# The files come from beside this script (the package build's OUT, or the
# source tree's docker/ and conf/secure/).
configure() {
	root=$1
	conf=$here/mosquitto.conf
	passwords=$here/make-passwords.sh
	[ -f "$passwords" ] || passwords=$here/../conf/secure/make-passwords.sh
	install -d "$root/etc/tally" "$root/var/lib/tally"
	install -m 644 "$conf" "$root/etc/tally/mosquitto.conf"
	"$passwords" "$root/etc/tally/passwords" >/dev/null
	chown mosquitto:mosquitto "$root/etc/tally/passwords" "$root/var/lib/tally"
	chmod 640 "$root/etc/tally/passwords"
	chmod 750 "$root/var/lib/tally"
}

case ${1:-} in
build) build "$2" "$3" ;;
install) install_package "$2" ;;
configure) configure "$2" ;;
*)
	echo "usage: $0 build SRC OUT | install OUT | configure ROOT" >&2
	exit 2
	;;
esac
