"""The commands: one module per `wm <command>`, each a thin `main(argv)` that parses, builds and calls the library in
experiments/. A command imports no other command, and nothing but experiments/cli.py imports a command."""
