"""Per-layer ranges for the depth-aware NEXUS operators, from the plain model on real text.

``record_ranges`` runs the plain float64 forward on token sequences padded as the encrypted run
pads them, and records every operator input per layer (``layer.RangeRecorder``).
``layer_configs`` turns those ranges, widened by ``margin``, into one ``LayerConfig`` per layer:
the Chebyshev GELU interval and degree, the softmax's centred-score range and round count, the
LayerNorm variance range and the bootstrap bounds. The simulate run checks every range again on
each input and raises ``OutOfRangeError`` rather than let an encrypted run go wrong silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from privformer import approx
from privformer.errors import InputError
from privformer.models.encoder import EmbeddingTables
from privformer.protocols.nexus.layer import (
    EncoderLayerWeights,
    FloatOps,
    LayerConfig,
    RangeRecorder,
    float_layer,
)

#: Calibrated ranges are widened by this factor (variances: its square, on both sides).
MARGIN = 1.25
#: GELU intervals up to this bound use degree 63 (depth 6, max error 6e-5 at 16), wider ones
#: degree 119 (depth 7; max error 1.6e-5 at 28, 1.5e-4 at 32). Wider than 32 is refused.
GELU_DEGREE_63_BOUND = 16.0
GELU_MAX_BOUND = 32.0
#: 1/sqrt starts from a degree-63 interpolant (depth 6) where that needs no Newton step, else
#: from degree 127 (depth 7, the whole window): on MiniLM's layer 0 (variances 0.09..194) 127
#: needs 1 step where 63 needs 3, each 3 levels, i.e. 2 bootstraps fewer per LayerNorm.
LAYERNORM_START_DEGREES = (63, 127)


def layernorm_start_degree(var_low: float, var_high: float) -> int:
    """The start degree for a variance range: the lowest that needs no Newton step, else the
    highest (whose few steps cost fewer levels than the lower degree's)."""
    for degree in LAYERNORM_START_DEGREES:
        if (
            approx.layernorm.chebyshev_start(
                approx.layernorm.LayerNormConfig(
                    var_low=var_low, var_high=var_high, start_degree=degree
                )
            )[1]
            == 0
        ):
            return degree
    return LAYERNORM_START_DEGREES[-1]


def padded(ids: Sequence[int], tokens: int, pad_id: int) -> np.ndarray:
    """``ids`` followed by ``pad_id`` up to ``tokens`` positions."""
    if len(ids) > tokens:
        raise InputError(f"{len(ids)} tokens exceed the {tokens} positions of the layout")
    return np.concatenate([np.asarray(ids, np.int64), np.full(tokens - len(ids), pad_id)])


def record_ranges(
    tables: EmbeddingTables,
    layers: Sequence[EncoderLayerWeights],
    sequences: Sequence[Sequence[int]],
    tokens: int,
    pad_id: int,
    cls_states: list[np.ndarray] | None = None,
) -> list[RangeRecorder]:
    """Every operator input of every layer (plain mode) over ``sequences``, each padded;
    ``cls_states``, if given, receives each sequence's final [CLS] state."""
    recorders = [RangeRecorder() for _ in layers]
    for ids in sequences:
        x = tables.embed(torch.as_tensor(padded(ids, tokens, pad_id))).numpy()
        for layer, recorder in zip(layers, recorders, strict=True):
            x = float_layer(x, layer, FloatOps("plain", recorder=recorder), len(ids))
        if cls_states is not None:
            cls_states.append(x[0])
    return recorders


def logit_bound(logits: np.ndarray, margin: float = MARGIN) -> float:
    """The argmax's input bound: the largest |logit| seen, widened by ``margin``."""
    return _round_up(margin * float(np.abs(logits).max()), 1.0)


def _round_up(x: float, step: float = 0.5) -> float:
    return step * math.ceil(x / step)


#: The first round's row sums may be as small as this (their inverse then takes a few more
#: Goldschmidt steps, on the one packed ciphertext); a smaller floor would cost rounds, each
#: two levels of every score ciphertext.
FIRST_INVERSE_FLOOR = 1e-3


def softmax_rounds(high: float) -> int:
    """Fewest normalize-and-square rounds k with exp(-2 high / 2^k) >= FIRST_INVERSE_FLOOR."""
    return max(1, math.ceil(math.log2(2.0 * high / -math.log(FIRST_INVERSE_FLOOR))))


def layer_config(ranges: RangeRecorder, tokens: int, margin: float = MARGIN) -> LayerConfig:
    """One layer's depth-aware configuration from its recorded ranges."""
    gelu_bound = _round_up(margin * ranges.magnitude("gelu"), 4.0)
    if gelu_bound > GELU_MAX_BOUND:
        raise InputError(
            f"GELU inputs reach {ranges.magnitude('gelu'):.1f}: beyond the {GELU_MAX_BOUND:g} "
            "a one-window Chebyshev interpolant covers"
        )
    # Below a row's mean, a wider range costs nothing but a little of exp's accuracy (its
    # values there are tiny): twice the margin. Above it, the range sets the rounds.
    low = -_round_up(-2.0 * margin * ranges.low["scores_centred"])
    high = _round_up(margin * ranges.high["scores_centred"])
    var_low = ranges.low["layernorm_variance"] / margin**2
    var_high = ranges.high["layernorm_variance"] * margin**2
    return LayerConfig(
        gelu_chebyshev=approx.gelu.ChebyshevGeluConfig(
            bound=gelu_bound, degree=63 if gelu_bound <= GELU_DEGREE_63_BOUND else 119
        ),
        softmax_squaring=approx.softmax.SquaringSoftmaxConfig(
            low=low, high=high, rounds=softmax_rounds(high)
        ),
        score_bound=_round_up(margin * ranges.magnitude("scores"), 4.0),
        layernorm=approx.layernorm.LayerNormConfig(
            var_low=var_low,
            var_high=var_high,
            input_bound=_round_up(margin * ranges.magnitude("layernorm_input"), 4.0),
            start_degree=layernorm_start_degree(var_low, var_high),
        ),
        activation_bound=_round_up(margin * ranges.magnitude("activation"), 4.0),
    )


def layer_configs(
    recorders: Sequence[RangeRecorder], tokens: int, margin: float = MARGIN
) -> list[LayerConfig]:
    return [layer_config(r, tokens, margin) for r in recorders]
