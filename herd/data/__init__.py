"""herd.data: sources, cleaning, dedupe, the synthetic corpus, the tokenizer, packing and the shard reader.

Library code only; `herd/flows/data.py` wires it into steps. See docs/architecture.md ("Packed data").
"""

from herd.data.config import DataConfig

__all__ = ["DataConfig"]
