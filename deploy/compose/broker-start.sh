#!/bin/sh
# Starts the compose corridor's Mosquitto: hashes the passwords that
# init-corridor.sh drew (one file per broker user, <user>.password) into
# Mosquitto's password file, then runs Mosquitto in the foreground.
#
# SECRETS, PASSWORDS and CONF default to the paths compose.yaml mounts.
set -eu

SECRETS=${SECRETS:-/secrets}
PASSWORDS=${PASSWORDS:-/mosquitto/data/passwords}
CONF=${CONF:-/mosquitto/config/mosquitto.conf}

# A new file at each start: the broker's users are exactly the secrets there.
rm -f "$PASSWORDS"
(umask 077 && : > "$PASSWORDS")
for secret in "$SECRETS"/*.password; do
    user=$(basename "$secret" .password)
    mosquitto_passwd -b "$PASSWORDS" "$user" "$(cat "$secret")"
done
# Mosquitto reads it after dropping root for its own user.
if [ "$(id -u)" = 0 ] && id mosquitto > /dev/null 2>&1; then
    chown mosquitto "$PASSWORDS"
fi
exec mosquitto -c "$CONF"
