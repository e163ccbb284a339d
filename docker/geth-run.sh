#!/bin/sh
# geth with the compose command's flags, plus --miner.gaslimit read from
# /genesis/$GENESIS_FILE: a sealer keeps the genesis's block gas limit instead of drifting
# toward geth's default (30M) by 1/1024 a block.
set -eu
for argument in "$@"; do
    case "$argument" in
    --miner.etherbase= | --unlock=)
        echo "SEALER_ADDRESS is empty: set it in .env to the sealer's address" >&2
        exit 2
        ;;
    esac
done
genesis="/genesis/${GENESIS_FILE:?GENESIS_FILE is not set}"
limit=$(tr -d ' \n\r\t' < "$genesis" | sed -n 's/.*"gasLimit":"\(0x[0-9a-fA-F]*\)".*/\1/p')
if [ -z "$limit" ]; then
    echo "no \"gasLimit\" in $genesis" >&2
    exit 1
fi
exec geth "$@" --miner.gaslimit="$((limit))"
