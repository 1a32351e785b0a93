"""How to present prompts to a model: versioned templates, tokenizers, the token budget."""
