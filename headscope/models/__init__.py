"""Model loading: TransformerBridge over Hugging Face models, hub, local directory or built-in zoo."""
