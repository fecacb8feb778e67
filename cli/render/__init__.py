"""Rendering library results for the terminal and for files: one module per result type, shared pieces in
`common`. Commands parse their options, call one library function and hand the result to a renderer here."""
