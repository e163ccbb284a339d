"""jamins: a name server for Jami."""
