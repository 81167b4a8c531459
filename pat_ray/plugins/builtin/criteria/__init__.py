"""Built-in importance criteria, one module each, registered like a third party's."""
