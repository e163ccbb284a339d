#!/bin/sh
# One-shot step before geth starts: initialise the data dir from /genesis/$GENESIS_FILE
# (once), and with SEALER_KEY_FILE import the sealer's key into the keystore (once).
set -eu
datadir=/data
genesis="/genesis/${GENESIS_FILE:?GENESIS_FILE is not set}"
if [ ! -f "$genesis" ]; then
    echo "missing $genesis: write it with \`jamins genesis ... --out genesis/$GENESIS_FILE\`" >&2
    exit 1
fi
if [ ! -d "$datadir/geth/chaindata" ]; then
    geth --datadir "$datadir" init "$genesis"
else
    echo "chain data already initialised"
fi
if [ -n "${SEALER_KEY_FILE:-}" ] && [ -z "$(ls -A "$datadir/keystore" 2>/dev/null)" ]; then
    geth --datadir "$datadir" account import --password "${SEALER_PASSWORD_FILE:?}" "$SEALER_KEY_FILE"
fi
