"""The command line (typer): parse options, call the core, render. No maths here."""
