"""QLoRA (Dettmers et al. 2023): LoRA on a frozen base stored in 4-bit NF4 (model/nf4.py).

    y = x dequant(W)^T + b + s * dropout(x) A^T B^T        W: NF4 codes + scales, ~0.52 bytes per weight

Only the frozen path changes: model.nf4.nf4_linear dequantizes W for the forward matmul and again for the
backward one, so no (out, in) matrix outlives its matmul; A and B stay fp32 and train as in plain LoRA.
This is a mixin: `class QLoRALinear(NF4Base, LoRALinear)` in lora/lora.py, which add_lora picks when the
layer it wraps is an NF4Linear (model.nf4.quantize_model ran first: train.py --quantize nf4).

Merging in place is refused: 4 bits cannot hold W + dW. lora.peft_io.merged_state_dict (export_merged,
train.py's merged/) dequantizes W and adds dW in fp32 instead, and the adapter itself is an ordinary
PEFT LoRA adapter. The walkthrough is docs/lora.md, "QLoRA: a 4-bit base".
"""

from __future__ import annotations

import torch

from model.nf4 import nf4_linear


class NF4Base:
    """The frozen path of a LoRALinear whose `weight` is a model.nf4.NF4Weight."""

    def base_forward(self, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """x W^T (+ b), W dequantized for this matmul only (in autocast's dtype when it is on)."""
        return nf4_linear(x, self.weight, self.bias if bias else None)

    def dense_weight(self) -> torch.Tensor:
        """W (out, in), dequantized in the dtype it was quantized from."""
        return self.weight.dequantize()

    def merge(self) -> None:
        raise ValueError(
            "an NF4 base cannot hold W + dW in 4 bits; export the merged weights with "
            "lora.peft_io.export_merged (W dequantized, dW added in fp32) instead of merging in place"
        )

    def unmerge(self) -> None:  # never merged
        pass
