"""What every command that fills shares: loading, options, faces, fitting (DESIGN.md)."""
