"""The `foldnorm` command line: parse options, call one library function, render what it returns."""
