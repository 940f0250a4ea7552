"""Decoding GPT-2: KV cache, greedy and sampled generation, and fixed-shape (CUDA graph, compiled) steps."""

from generation.decode import generate, generate_stream, sample

__all__ = ["generate", "generate_stream", "sample"]
