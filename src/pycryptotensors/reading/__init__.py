"""Reading: byte sources, opening and verifying a file (``reader``), slicing (``slicing``), and the
``safe_open`` handle that frameworks see (``handle``)."""
