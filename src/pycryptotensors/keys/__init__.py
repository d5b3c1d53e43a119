"""Keys and trust. After age: a *master key* wraps data keys on save (the recipient's side) and unwraps them
on load (the identity's side); a *signing key* signs a header and its public half verifies it. ``jwk``
converts keys to and from JSON Web Keys; ``keyring`` finds the key a file asks for among those the caller
configured.

Nothing is imported here: ``trust`` and ``files`` stay light for transparent mode's plain-file path."""
