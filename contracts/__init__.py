"""The registrar contract: Solidity source and the compiled artifact (Registrar.json)."""
