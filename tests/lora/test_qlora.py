"""lora/qlora.py: a QLoRA adapter trained here is an ordinary PEFT adapter, and transformers + bitsandbytes
quantize the same base to the very codes ours holds, so PEFT on that 4-bit base runs our QLoRA model.

bitsandbytes' CPU matmul (0.50) does not multiply in fp32: on its own dequantized weights it differs from
F.linear by ~3e-3 (it repacks the weight for its CPU kernel), so the logits agree to 1e-2, the weights
exactly."""

import torch
from transformers import BitsAndBytesConfig, GPT2Config, GPT2LMHeadModel

from lora.config import LoRAConfig
from lora.lora import QLoRALinear, inject_lora, lora_layers
from lora.peft_io import save_adapter
from model.hf import load_pretrained
from model.nf4 import quantize_model


def test_our_qlora_adapter_on_a_bitsandbytes_4bit_base_in_peft_gives_our_logits(tmp_path, randomize):
    from bitsandbytes.functional import dequantize_4bit
    from peft import PeftModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2, n_head=4, n_embd=64, n_positions=64, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )
    randomize(GPT2LMHeadModel(cfg)).save_pretrained(tmp_path / "base")  # rows of 64: bitsandbytes' CPU needs
    ours = load_pretrained(tmp_path / "base")
    quantize_model(ours)
    inject_lora(ours, LoRAConfig(rank=4, alpha=8, targets="c_attn,mlp.c_fc"), verbose=False)
    assert all(isinstance(m, QLoRALinear) for m in lora_layers(ours).values())
    x = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        ours(x, targets=x).backward()
        opt.step()
        opt.zero_grad()
    save_adapter(ours.eval(), tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.float32)  # fmt: skip
    base4 = GPT2LMHeadModel.from_pretrained(tmp_path / "base", quantization_config=q, device_map={"": "cpu"})
    for name, m in ours.named_modules():  # Conv1D's (in, out) weight, transposed by transformers: our layout
        if name.startswith("transformer.h.") and hasattr(m, "weight") and hasattr(m.weight, "codes"):
            theirs = base4.get_submodule(name).weight
            assert torch.equal(theirs.data.view(-1), m.weight.codes), name
            assert torch.equal(dequantize_4bit(theirs.data, theirs.quant_state), m.weight.dequantize()), name
    peft = PeftModel.from_pretrained(base4, tmp_path / "adapter").eval()
    with torch.no_grad():
        mine, theirs = ours(x), peft(input_ids=x).logits
        dense = load_pretrained(tmp_path / "base")(x)
    torch.testing.assert_close(theirs, mine, atol=1e-2, rtol=0)
    assert (mine - dense).abs().max() > 5e-2  # 4 bits (and the adapter) really changed the model
