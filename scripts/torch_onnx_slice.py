#!/usr/bin/env python3
"""The reference export of `make bench-slice`: the same FLUX.1-dev transformer slice (full width,
--double double and --single single blocks) loaded into diffusers' FluxTransformer2DModel in fp32
and exported by torch.onnx (dynamo), with external data, at the benchmark's token counts.

    torch_onnx_slice.py CHECKPOINT.safetensors OUT/model.onnx --double 1 --single 2 --image-tokens 256 --text-tokens 64
"""
import argparse
import os

import torch
from diffusers import FluxTransformer2DModel
from safetensors.torch import load_file


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--double", type=int, required=True)
    parser.add_argument("--single", type=int, required=True)
    parser.add_argument("--image-tokens", type=int, default=256)
    parser.add_argument("--text-tokens", type=int, default=64)
    args = parser.parse_args()
    # FLUX.1-dev's configuration (transformer/config.json), with the slice's block counts.
    model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=args.double,
                                   num_single_layers=args.single, attention_head_dim=128,
                                   num_attention_heads=24, joint_attention_dim=4096,
                                   pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    model.load_state_dict({k: v.float() for k, v in load_file(args.checkpoint).items()}, strict=True)
    model.eval()
    li, lt = args.image_tokens, args.text_tokens
    inputs = dict(hidden_states=torch.randn(1, li, 64), encoder_hidden_states=torch.randn(1, lt, 4096),
                  pooled_projections=torch.randn(1, 768), timestep=torch.full((1,), 0.5),
                  img_ids=torch.zeros(li, 3), txt_ids=torch.zeros(lt, 3), guidance=torch.full((1,), 3.5),
                  return_dict=False)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(model, (), kwargs=inputs, dynamo=True, external_data=True)
    program.save(args.out, external_data=True)


if __name__ == "__main__":
    main()
