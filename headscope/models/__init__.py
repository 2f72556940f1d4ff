"""Model loading: a TransformerBridge over a hub model, a local directory or a built-in."""
