#!/bin/sh
# As the official image's entrypoint: the volumes may have been filled by another
# container (root), and the broker reads them after dropping to its own user.
set -e
if [ "$(id -u)" = 0 ]; then
    chown -R mosquitto:mosquitto /mosquitto
fi
exec "$@"
