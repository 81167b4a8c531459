"""What each op does to channels, one module per op family; ``table.py`` maps targets to kinds."""
