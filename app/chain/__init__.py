"""Everything that talks to the Ethereum chain: node management, client, registrar."""
