"""Stand-in model flow for the evaluate flow test: random tiny models declared as teacher and student."""

from __future__ import annotations

from herd.platform.runner import Resources, Step, StepContext


def fake_train(ctx: StepContext) -> None:
    """A stand-in training step: a random tiny Llama 4 saved with the data flow's tokenizer."""
    import torch

    from herd.model import Llama4, ModelConfig, save_hf

    torch.manual_seed(ctx.config["seed"])
    cfg = ModelConfig(vocab_size=512, hidden_size=32, intermediate_size=48, intermediate_size_mlp=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_local_experts=2,
                      attention_chunk_size=32)
    save_hf(Llama4(cfg), ctx.output_dir("model", format="hf-safetensors"),
            tokenizer=str(ctx.inputs["tokenizer"].local_path()))


def fake_models(recipe) -> list[Step]:
    tok = "data.tokenizer.tokenizer"
    return [Step("fake.teacher", fake_train, config={"seed": 0}, inputs={"tokenizer": tok},
                 outputs={"model": "model"}, roles={"model": "teacher"}, in_driver=True, resources=Resources(0)),
            Step("fake.student", fake_train, config={"seed": 1},
                 inputs={"tokenizer": tok, "teacher": "fake.teacher.model"},
                 outputs={"model": "model"}, roles={"model": "student"}, in_driver=True, resources=Resources(0))]
