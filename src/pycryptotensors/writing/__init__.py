"""Writing: laying tensors out, encrypting them chunk by chunk to disk, and signing the header."""
