"""Format parsing and validation: the safetensors layer (``header``), the crypto layer
(``crypto_header``), what the signature covers (``signing``) and the dtype table (``dtypes``)."""
