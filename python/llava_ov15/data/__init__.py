"""Data utilities: the Qwen tokenizer file builder, token lengths, shard loaders."""
