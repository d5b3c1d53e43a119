"""Whole-file and whole-folder operations, above both reading and writing: encrypting a plain model,
decrypting an encrypted one (``files``), and re-wrapping data keys under a new master key (``rewrap``)."""
