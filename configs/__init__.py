"""avloc's run configs, one `get_config(variant)` per method (`--config=configs/jsa.py`)."""
