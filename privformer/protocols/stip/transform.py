"""The STIP weight transform: draw the secret permutations and build the permuted cloud model.

Theorem (STIP, v1): with x' = x[..., pi] and every parameter transformed by its role (see
``layout``), the permuted model computes f'(x') = f(x)[..., pi]. Scheme v2 also permutes each
layer's attention and MLP hidden spaces and the vocabulary (3L+2 permutations), so the cloud's
weights in those spaces no longer line up with the original ones and its logits come back under
pi_c; the equality is still exact up to floating-point summation order.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from privformer.errors import UnknownNameError, UnsupportedModelError
from privformer.models.registry import HFModel
from privformer.protocols.stip.layout import Architecture, Role, describe
from privformer.protocols.stip.permutations import (
    attention_permutation,
    identity,
    random_permutation,
)

SCHEMES = ("v1", "v2")


@dataclass
class StipSecret:
    """Every permutation of one export, by space name. Only ``pi`` and ``pi_c`` go to the user."""

    scheme: str
    spaces: dict[str, torch.Tensor]

    @property
    def pi(self) -> torch.Tensor:
        return self.spaces["resid"]

    @property
    def pi_c(self) -> torch.Tensor | None:
        return self.spaces.get("vocab")


def draw_secret(arch: Architecture, scheme: str) -> StipSecret:
    """Draw the permutations of a scheme from the CSPRNG: pi for v1, 3L+2 permutations for v2."""
    if scheme not in SCHEMES:
        raise UnknownNameError(f"unknown STIP scheme {scheme!r}; choose one of {SCHEMES}")
    v2 = scheme == "v2"
    spaces = {"resid": random_permutation(arch.hidden_size)}
    for i in range(arch.num_layers):
        attn = attention_permutation(
            arch.num_heads, arch.num_kv_heads, arch.head_dim, rope=arch.rope, randomize=v2
        )
        spaces[f"q{i}"], spaces[f"k{i}"], spaces[f"v{i}"], spaces[f"o{i}"] = (
            attn.q,
            attn.k,
            attn.v,
            attn.o,
        )
        draw = random_permutation if v2 else identity
        spaces[f"ffn{i}"] = draw(arch.intermediate_size)
        if arch.family == "gpt2":  # fused c_attn: [q | k | v] along the output axis
            d = arch.hidden_size
            spaces[f"qkv{i}"] = torch.cat([attn.q, d + attn.k, 2 * d + attn.v])
    if v2 and arch.has_lm_head:
        spaces["vocab"] = random_permutation(arch.vocab_size)
    return StipSecret(scheme=scheme, spaces=spaces)


def _index(spaces: dict[str, torch.Tensor], name: str | None, size: int) -> torch.Tensor | None:
    """The index vector of a space, or None for an identity (absent or unpermuted) space."""
    if name is None or name not in spaces:
        return None
    perm = spaces[name]
    if perm.numel() != size:
        raise UnsupportedModelError(f"space {name!r} has {perm.numel()} entries, axis has {size}")
    return perm


def transform_tensor(
    tensor: torch.Tensor, role: Role, spaces: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Apply a parameter's role: permute its axes by the spaces they read and write."""
    if role.kind == "user":
        return torch.zeros_like(tensor)
    if tensor.ndim == 1:  # a bias or norm vector lives in the output space
        out = _index(spaces, role.out_space, tensor.shape[0])
        return tensor if out is None else tensor[out]
    if role.kind == "linear":  # (out, in)
        out_axis, in_axis = 0, 1
    elif role.kind == "conv1d":  # (in, out)
        out_axis, in_axis = 1, 0
    else:
        raise UnsupportedModelError(f"role {role.kind!r} cannot hold a {tensor.ndim}-D tensor")
    out = _index(spaces, role.out_space, tensor.shape[out_axis])
    inp = _index(spaces, role.in_space, tensor.shape[in_axis])
    if out is not None:
        tensor = tensor.index_select(out_axis, out)
    if inp is not None:
        tensor = tensor.index_select(in_axis, inp)
    return tensor.contiguous()


def cloud_class_name(arch: Architecture, scheme: str) -> str:
    """v1 decoders serve the body only (the user keeps the LM head); otherwise the full class."""
    if arch.has_lm_head and scheme == "v1":
        return arch.base_class
    return {"bert": "BertModel", "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[
        arch.family
    ]


def build_cloud_model(
    model: HFModel, arch: Architecture, secret: StipSecret, *, progress: bool = False
) -> HFModel:
    """The permuted model the cloud serves: embeddings zeroed, every other weight transformed.

    v1 decoders lose their LM head (the cloud would otherwise see plain logits); v2 decoders keep
    an untied head permuted to pi_c, since the zeroed embedding table can no longer be shared.
    """
    import transformers

    class_name = cloud_class_name(arch, secret.scheme)
    strip = arch.prefix if class_name == arch.base_class else ""
    state = {}
    with torch.no_grad():
        items = model.state_dict().items()
        for key, tensor in tqdm(
            items, desc="permuting weights", unit="tensor", disable=not progress
        ):
            if key == "lm_head.weight" and strip:
                continue
            new_key = key.removeprefix(strip) if strip else key
            state[new_key] = transform_tensor(
                tensor.detach(), arch.roles[key], secret.spaces
            ).clone()

    config = copy.deepcopy(model.config)
    config.architectures = [class_name]
    if arch.has_lm_head:
        config.tie_word_embeddings = False
    cloud = getattr(transformers, class_name)(config).to(next(model.parameters()).dtype)
    missing, unexpected = cloud.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UnsupportedModelError(
            f"cloud model mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    return cloud.eval()


def describe_and_draw(model: HFModel, scheme: str) -> tuple[Architecture, StipSecret]:
    """Convenience: the architecture of a model and a fresh secret for it."""
    arch = describe(model)
    return arch, draw_secret(arch, scheme)
