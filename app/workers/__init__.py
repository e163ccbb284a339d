"""The server's long-running loops, each under a Supervisor: the leader loop, and under it
the transaction writer and the indexer; the chain watch."""
