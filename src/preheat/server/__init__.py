"""The Anthropic Messages API over HTTP; knows token ids and events, never tensors."""
