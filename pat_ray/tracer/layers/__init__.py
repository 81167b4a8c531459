"""Layer families, one module each; ``table.py`` lists them and finds a module's family."""
