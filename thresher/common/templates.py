"""Prompt templates shared by instruction scoring (ICon) and instruction training."""

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{prompt}\n\n### Response:\n"
)
"""Default prompt template (Alpaca style); ``{prompt}`` is replaced by the prompt column."""
