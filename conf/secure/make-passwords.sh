#!/bin/sh
# Writes Mosquitto's password_file for tally's roles (see README.md).
#
#     conf/secure/make-passwords.sh [FILE]     (default: conf/secure/passwords)
#
# Each user gets the demo password below unless its variable is set, e.g.
#     TALLY_ADMIN_PASSWORD='long random words' conf/secure/make-passwords.sh
# Only the script is shipped, never the file: mosquitto_passwd salts every
# hash at random, so a committed file would change on every run and would
# carry hashes of passwords everyone knows. The passwords travel on
# mosquitto_passwd's command line (visible in ps) while this runs.
set -eu

file=${1:-$(dirname "$0")/passwords}
umask 077
: >"$file"

add() {
    mosquitto_passwd -b "$file" "$1" "$2"
}

add device "${TALLY_DEVICE_PASSWORD:-device-demo}"
add browser "${TALLY_BROWSER_PASSWORD:-browser-demo}"
add presser "${TALLY_PRESSER_PASSWORD:-presser-demo}"
add tally-bridge "${TALLY_BRIDGE_PASSWORD:-bridge-demo}"
add admin "${TALLY_ADMIN_PASSWORD:-admin-demo}"
echo "wrote $file"
