#!/bin/sh
# Run dhtnode as a service (no console) on DHT_PORT (UDP). With DHT_BOOTSTRAP (host:port)
# it joins that DHT, e.g. Jami's public one; empty, it starts a DHT of its own.
set -eu
port="${DHT_PORT:-4222}"
if [ -n "${DHT_BOOTSTRAP:-}" ]; then
    exec dhtnode -s -p "$port" -b "$DHT_BOOTSTRAP"
fi
exec dhtnode -s -p "$port"
