"""The `astroclf` command line (typer): thin commands over the library."""
