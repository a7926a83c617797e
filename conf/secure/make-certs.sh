#!/bin/sh
# A self-signed certificate authority and a server certificate it signs, for
# the TLS listener of mosquitto.conf (see README.md).
#
#     conf/secure/make-certs.sh DIR [NAME...]
#
# writes DIR/ca.crt, DIR/ca.key, DIR/server.crt, DIR/server.key. The server
# certificate is valid for localhost, 127.0.0.1 and every NAME (a host name
# or an IP address clients connect to). Clients trust DIR/ca.crt
# (mosquitto_pub --cafile DIR/ca.crt). Keep DIR/ca.key offline and secret;
# nothing here is committed.
set -eu

if [ $# -lt 1 ]; then
    echo "usage: $0 DIR [NAME...]" >&2
    exit 2
fi
dir=$1
shift
mkdir -p "$dir"
umask 077

san="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
    case $name in
    *[!0-9.]*) san="$san,DNS:$name" ;;
    *) san="$san,IP:$name" ;;
    esac
done

openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
    -subj "/CN=tally demo CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
openssl req -new -newkey rsa:2048 -nodes -sha256 \
    -subj "/CN=${1:-localhost}" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$san" \
    >"$dir/server.ext"
openssl x509 -req -sha256 -days 825 -in "$dir/server.csr" -CA "$dir/ca.crt" \
    -CAkey "$dir/ca.key" -CAcreateserial -extfile "$dir/server.ext" \
    -out "$dir/server.crt" 2>/dev/null
rm -f "$dir/server.csr" "$dir/server.ext" "$dir/ca.srl"
chmod 644 "$dir/ca.crt" "$dir/server.crt"
echo "wrote $dir/ca.crt, $dir/server.crt and their keys (for $san)"
