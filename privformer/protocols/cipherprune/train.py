"""Fine-tuning and crypto-aware threshold learning (CipherPrune, Algorithm 1), on real data.

1. ``finetune``: MiniLM (the embedded all-MiniLM-L6-v2) with a linear head on [CLS], trained on
   the Rotten Tomatoes training split with exact GELU/softmax/LayerNorm.
2. ``learn_thresholds``: the weights frozen, per-layer keep and high thresholds are learned by
   gradient descent through a soft version of the pruned forward pass that uses the 2PC
   approximations: keep masks sigmoid((S - theta) / tau) scale each token's weight as a key and
   as a row of the importance average; high masks mix the accurate and reduced GELU and exp. The
   loss is cross-entropy plus lambda times the expected cost of the layers, in units measured on
   our engine (bytes per token of linear + GELU, per token pair of softmax, and the extra of an
   accurate GELU).
3. The thresholds are then used hard (``PruningConfig``), and ``evaluate`` measures the test split
   in ``plain`` and ``simulate`` mode.

The split is fixed: a seeded shuffle of the 8,530 sentences, the last 1,066 (the size of the
standard Rotten Tomatoes test split) held out.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from privformer import approx
from privformer.data import SPLIT_SEED, TEST_SIZE, imdb_split, rotten_tomatoes_split
from privformer.errors import InputError, OutOfRangeError
from privformer.models.classifiers import cls_states
from privformer.models.registry import HFModel, cache_dir
from privformer.protocols.cipherprune.format import BASES
from privformer.protocols.cipherprune.model import MASK_VALUE, BertClassifierWeights, PruningConfig
from privformer.protocols.cipherprune.simulate import run_float

T = TypeVar("T")
LONG_N = 512
#: Relative cost of one token through one layer (linear layers, LayerNorm, GELU), of one token
#: pair in softmax, and the extra of an accurate over a reduced GELU: bytes measured on this
#: engine for MiniLM at 128 tokens (289 MB GELU + 30 MB rest per layer ~ n; 265 MB softmax ~ n^2;
#: the reduced GELU drops one of three comparisons).
COST_TOKEN, COST_PAIR, COST_HIGH = 1.0, 0.83, 0.33
DEFAULT_LAMBDA = 0.1


def _batches(data: Sequence, size: int, seed: int) -> list[list]:
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    return [[data[i] for i in order[k : k + size]] for k in range(0, len(order), size)]


def finetune(
    bert: HFModel,
    tokenizer,
    train: Sequence[tuple[str, int]],
    epochs: int = 2,
    lr: float = 5e-5,
    batch: int = 32,
    max_length: int = 64,
    seed: int = 0,
) -> torch.nn.Linear:
    """Fine-tune ``bert`` in place with a new linear head on [CLS]; returns the head."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(bert.config.hidden_size, 2)
    params = list(bert.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(train) / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / steps))
    bert.train()
    name = getattr(bert.config, "model_type", "encoder")
    bar = tqdm(total=steps, desc=f"fine-tune {name} on Rotten Tomatoes", unit="step")
    for epoch in range(epochs):
        for chunk in _batches(train, batch, seed + epoch):
            cls = cls_states(bert, tokenizer, [t for t, _ in chunk], max_length)
            loss = F.cross_entropy(head(cls), torch.tensor([y for _, y in chunk]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    bert.eval()
    return head


@dataclass
class SoftThresholds:
    """theta_l = softplus(phi_l) / n and beta_l = theta_l + softplus(psi_l) / n."""

    phi: torch.Tensor
    psi: torch.Tensor
    n: int

    @classmethod
    def init(cls, layers: int, n: int, keep: float = 0.3, gap: float = 1.0) -> SoftThresholds:
        inv = lambda v: math.log(math.expm1(v))  # noqa: E731  (softplus^-1)
        return cls(
            torch.full((layers,), inv(keep), requires_grad=True),
            torch.full((layers,), inv(gap), requires_grad=True),
            n,
        )

    def values(self) -> tuple[torch.Tensor, torch.Tensor]:
        keep = F.softplus(self.phi) / self.n
        return keep, keep + F.softplus(self.psi) / self.n


def _layernorm(
    w: BertClassifierWeights, t: dict[str, torch.Tensor], name: str, x: torch.Tensor
) -> torch.Tensor:
    """The 2PC LayerNorm on the rows whose variance lies in its calibrated range; the exact one on
    the others. Soft pruning keeps every row, and a row it has nearly removed can leave the range
    (it would not exist in the pruned 2PC run): training must not stop on it. ``evaluate`` runs
    the real executor and counts the inputs 2PC would refuse."""
    g, b, eps = t[f"{name}.g"], t[f"{name}.b"], w.norm_eps(name)
    config = w.layernorm_range(name)
    var = x.detach().var(-1, unbiased=False) + eps
    inside = (var >= config.var_low) & (var <= config.var_high)
    if bool(inside.all()):
        return approx.layernorm.cipherprune(x, g, b, eps, config)
    out = F.layer_norm(x, (x.shape[-1],), g, b, eps)
    return out.index_put((inside,), approx.layernorm.cipherprune(x[inside], g, b, eps, config))


def soft_forward(
    w: BertClassifierWeights,
    tensors: dict[str, torch.Tensor],
    ids: torch.Tensor,
    valid: torch.Tensor,
    keep: torch.Tensor,
    high: torch.Tensor,
    tau: float,
    layernorm: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched soft pruned forward with the 2PC approximations; returns (logits, expected cost
    relative to the unpruned model on the real tokens). ``layernorm(name, x)`` replaces the 2PC
    LayerNorm (``calibrate_layernorm`` passes an exact one that records its inputs)."""
    t = tensors
    b, n = ids.shape
    heads, d = w.heads, w.hidden
    norm = layernorm or (lambda name, v: _layernorm(w, t, name, v))
    x = norm("emb.ln", t["emb.word"][ids] + t["emb.pos"][:n] + t["emb.type0"])
    key_bias = (1.0 - valid) * MASK_VALUE
    relative = w.relative_bias()  # MPNet; soft pruning keeps every row, so positions stay put
    position_bias = 0.0 if relative is None else relative.matrix(torch.arange(n)).to(x.dtype)
    alive = torch.ones(b, n)
    hi = torch.ones(b, n)
    cls_one = torch.zeros(b, n)  # [CLS] is always kept and high
    cls_one[:, 0] = 1.0
    cost = torch.zeros(())
    # cost relative to running the real (unpadded) tokens unpruned: padding alone is free to
    # drop (it receives no attention), so it must not dilute the penalty
    n_real = valid.sum(-1)
    full = COST_TOKEN * n_real + COST_PAIR * n_real**2 + COST_HIGH * n_real
    for i in range(w.layers):
        qkv = x @ t[f"l{i}.qkv.w"] + t[f"l{i}.qkv.b"]
        q, k, v = (
            qkv[..., j * d : (j + 1) * d].reshape(b, n, heads, d // heads).transpose(1, 2)
            for j in range(3)
        )
        scores = (
            q @ k.transpose(-1, -2)
            + position_bias
            + (key_bias + torch.log(alive.clamp_min(1e-9)))[:, None, None, :]
        )
        row_hi = hi[:, None, :, None]
        probs = row_hi * approx.softmax.cipherprune(scores, None, approx.softmax.EXP_HIGH) + (
            1 - row_hi
        ) * approx.softmax.cipherprune(scores, None, approx.softmax.EXP_LOW)
        ctx = (probs @ v).transpose(1, 2).reshape(b, n, d)
        # every layer learns thresholds; PruningConfig can switch layers off later
        importance = (alive[:, None, :, None] * probs).sum(dim=(1, 2)) / (
            heads * alive.sum(-1, keepdim=True)
        )
        alive = alive * torch.maximum(torch.sigmoid((importance - keep[i]) / tau), cls_one)
        hi = torch.maximum(torch.sigmoid((importance - high[i]) / tau), cls_one)
        x = norm(f"l{i}.ln1", ctx @ t[f"l{i}.o.w"] + t[f"l{i}.o.b"] + x)
        h = x @ t[f"l{i}.ffn1.w"] + t[f"l{i}.ffn1.b"]
        g_high = approx.gelu.cipherprune(h, approx.gelu.GELU_HIGH)
        g_low = approx.gelu.cipherprune(h, approx.gelu.GELU_LOW)
        g = hi[..., None] * g_high + (1 - hi[..., None]) * g_low
        x = norm(f"l{i}.ln2", g @ t[f"l{i}.ffn2.w"] + t[f"l{i}.ffn2.b"] + x)
        n_alive = alive.sum(-1)
        layer_cost = (
            COST_TOKEN * n_alive + COST_PAIR * n_alive**2 + COST_HIGH * (alive * hi).sum(-1)
        )
        cost = cost + (layer_cost / full).mean() / w.layers
    return x[:, 0] @ t["head.w"] + t["head.b"], cost


def calibrate_layernorm(
    w: BertClassifierWeights,
    tokenizer,
    texts: Sequence[str],
    n: int = 128,
    margin: float = 4.0,
) -> dict[str, tuple[float, float]]:
    """Per-LayerNorm variance ranges for the rsqrt, set on ``w`` and returned: the variances the
    model sees on ``texts`` padded to ``n`` (padding rows included: 2PC normalises them too,
    before they are pruned; softmax and GELU as 2PC approximates them, nothing pruned), widened by
    ``margin`` each way and rounded out to powers of two. A narrower range needs fewer Newton
    steps, each 3 rounds per LayerNorm."""
    seen: dict[str, list[float]] = {}
    t = w.tensors

    def exact_recording(name: str, x: torch.Tensor) -> torch.Tensor:
        eps = w.norm_eps(name)
        var = x.var(-1, unbiased=False) + eps
        old = seen.get(name, [float(var.min()), float(var.max())])
        seen[name] = [min(old[0], float(var.min())), max(old[1], float(var.max()))]
        return F.layer_norm(x, (w.hidden,), t[f"{name}.g"], t[f"{name}.b"], eps)

    keep_all = torch.full((w.layers,), -1.0)  # importance >= 0 > -1: every row stays, all high
    for start in range(0, len(texts), 16):
        enc = tokenizer(
            list(texts[start : start + 16]),
            padding="max_length",
            truncation=True,
            max_length=n,
            return_tensors="pt",
        )
        valid = enc["attention_mask"].to(torch.float64)
        with torch.no_grad():
            soft_forward(w, t, enc["input_ids"], valid, keep_all, keep_all, 1e-3, exact_recording)
    ranges = {
        name: (
            2.0 ** math.floor(math.log2(low / margin)),
            2.0 ** math.ceil(math.log2(high * margin)),
        )
        for name, (low, high) in seen.items()
    }
    w.layernorm_ranges = ranges
    return ranges


def learn_thresholds(
    w: BertClassifierWeights,
    tokenizer,
    train: Sequence[tuple[str, int]],
    n: int = 128,
    lam: float = 1.0,
    steps: int = 150,
    batch: int = 16,
    lr: float = 0.05,
    tau_rel: float = 0.1,
    seed: int = 0,
) -> PruningConfig:
    """Learn per-layer keep/high thresholds for inputs padded to ``n`` tokens."""
    return flushing_denormals(
        _learn_thresholds, w, tokenizer, train, n, lam, steps, batch, lr, tau_rel, seed
    )


def flushing_denormals(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` with subnormal floats treated as zero by every thread that computes it.

    Soft pruning multiplies attention by sigmoids that reach 1e-40 once thresholds bite, and the
    exp approximation squares small values through the subnormal range; on Intel CPUs each
    subnormal operand costs ~100 cycles (MPNet's threshold steps went from 10 s to 34 s as
    learning went on). Values that small change no gradient that matters. The flag lives in each
    thread's FP control register and threads inherit it when created, so ``fn`` runs in a fresh
    thread that sets it first: torch's intra-op pool for that thread is created after, with the
    flag; the caller's threads are left as they were."""
    result: dict[str, Any] = {}

    def run() -> None:
        torch.set_flush_denormal(True)
        try:
            result["value"] = fn(*args)
        except BaseException as e:  # re-raised in the caller's thread
            result["error"] = e

    worker = threading.Thread(target=run, name="flush-denormals", daemon=True)
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _learn_thresholds(
    w: BertClassifierWeights,
    tokenizer,
    train: Sequence[tuple[str, int]],
    n: int,
    lam: float,
    steps: int,
    batch: int,
    lr: float,
    tau_rel: float,
    seed: int,
) -> PruningConfig:
    torch.manual_seed(seed)
    tensors = {k: v.to(torch.float32) for k, v in w.tensors.items()}
    soft = SoftThresholds.init(w.layers, n)
    opt = torch.optim.Adam([soft.phi, soft.psi], lr=lr)
    chunks = _batches(train, batch, seed)
    bar = tqdm(range(steps), desc="learn pruning thresholds", unit="step")
    for step in bar:
        chunk = chunks[step % len(chunks)]
        enc = tokenizer(
            [s for s, _ in chunk],
            padding="max_length",
            truncation=True,
            max_length=n,
            return_tensors="pt",
        )
        keep, high = soft.values()
        logits, cost = soft_forward(
            w, tensors, enc["input_ids"], enc["attention_mask"].float(), keep, high, tau_rel / n
        )
        ce = F.cross_entropy(logits, torch.tensor([y for _, y in chunk]))
        loss = ce + lam * cost
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(ce=f"{ce.item():.3f}", cost=f"{cost.item():.3f}")
    keep_list, high_list = (v.detach().tolist() for v in soft.values())
    return PruningConfig(keep_list, high_list)


@dataclass
class Evaluation:
    accuracy: float
    tokens_per_layer: list[float]
    seconds: float
    #: inputs an approximation refused (out of its range): 2PC would refuse them too; they count
    #: as wrong in ``accuracy`` and are left out of ``tokens_per_layer``
    out_of_range: int = 0


def evaluate(
    w: BertClassifierWeights,
    tokenizer,
    data: Sequence[tuple[str, int]],
    pruning: PruningConfig | None,
    mode: str,
    n: int = 128,
    desc: str = "evaluate",
) -> Evaluation:
    """Accuracy and mean tokens entering each layer over ``data`` (one sequence at a time, the
    exact executor the secure run mirrors)."""
    start = time.perf_counter()
    correct = refused = 0
    tokens = np.zeros(w.layers + 1)
    for text, label in tqdm(data, desc=desc, unit="text"):
        enc = tokenizer(
            text, padding="max_length", truncation=True, max_length=n, return_tensors="pt"
        )
        try:
            logits, trace, _ = run_float(
                w, enc["input_ids"][0], enc["attention_mask"][0], pruning, mode
            )
        except OutOfRangeError:
            refused += 1
            continue
        correct += int(int(logits.argmax()) == label)
        tokens += np.array(trace.tokens_per_layer)
    answered = max(len(data) - refused, 1)
    return Evaluation(
        correct / len(data),
        (tokens / answered).tolist(),
        time.perf_counter() - start,
        refused,
    )


#: Sentences (Rotten Tomatoes at 128 tokens, IMDB at 512) the LayerNorm ranges of an encoder
#: that needs its own (MPNet) are calibrated on.
LAYERNORM_CALIBRATION = (64, 8)


def default_classifier_dir(base: str = "minilm") -> Path:
    """Where ``build_classifier`` keeps the fine-tuned ``base`` with learned thresholds."""
    return cache_dir() / "cipherprune" / f"{base}-rotten-tomatoes"


def build_classifier(
    out: str | Path | None = None,
    epochs: int = 2,
    threshold_steps: int = 150,
    lam: float = DEFAULT_LAMBDA,
    n: int = 128,
    seed: int = 0,
    base: str = "minilm",
) -> Path:
    """Fine-tune ``base`` (``BASES``) on Rotten Tomatoes, learn thresholds, save (atomically)
    and return the folder; an existing folder is returned as is. The fine-tuned weights are
    kept in a sibling folder first (``finetuned_classifier``), so a build stopped while
    learning thresholds resumes there instead of fine-tuning again."""
    from privformer.models.registry import atomic_materialize, load_tokenizer
    from privformer.protocols.cipherprune.format import save_classifier

    if base not in BASES:
        raise InputError(f"unknown base {base!r}; choose one of {sorted(BASES)}")
    target = Path(out) if out is not None else default_classifier_dir(base)

    def build(tmp: Path) -> None:
        start = time.perf_counter()
        tok = load_tokenizer(base)
        train, _test = rotten_tomatoes_split()
        w = finetuned_classifier(target, base, epochs, seed)
        finetune_seconds = w.meta.get("finetune_seconds")
        if w.relative_max_distance:  # MPNet: LayerNorm inputs beyond MiniLM's rsqrt range
            short, long = LAYERNORM_CALIBRATION
            ranges = calibrate_layernorm(w, tok, [t for t, _ in train[:short]], n)
            wide = calibrate_layernorm(w, tok, [t for t, _ in imdb_split()[0][:long]], LONG_N)
            w.layernorm_ranges = {
                k: (min(ranges[k][0], wide[k][0]), max(ranges[k][1], wide[k][1])) for k in ranges
            }
        pruning = learn_thresholds(w, tok, train, n=n, lam=lam, steps=threshold_steps, seed=seed)
        # long inputs get their own thresholds, learned on IMDB training reviews at 512 tokens
        pruning_long = learn_thresholds(
            w,
            tok,
            imdb_split()[0],
            n=LONG_N,
            lam=lam,
            steps=threshold_steps // 3,
            batch=2,
            seed=seed,
        )
        w.meta = {
            "base": BASES[base],
            "task": "rotten_tomatoes",
            "test_size": TEST_SIZE,
            "split_seed": SPLIT_SEED,
            "epochs": epochs,
            "threshold_steps": threshold_steps,
            "lambda": lam,
            "n": n,
            "seed": seed,
            "finetune_seconds": finetune_seconds,
            "threshold_seconds": time.perf_counter() - start,
        }
        save_classifier(w, pruning, tmp)
        (tmp / f"pruning-{LONG_N}.json").write_text(pruning_long.to_json())

    return atomic_materialize(target, build)


def finetuned_classifier(
    target: Path, base: str = "minilm", epochs: int = 2, seed: int = 0
) -> BertClassifierWeights:
    """``base`` fine-tuned on Rotten Tomatoes (no thresholds), built once into the sibling
    folder ``<target>.finetuned-e<epochs>-s<seed>`` and loaded from there afterwards."""
    from privformer.models.registry import atomic_materialize, load_model, load_tokenizer
    from privformer.protocols.cipherprune.format import load_classifier, save_classifier

    stage = target.parent / f"{target.name}.finetuned-e{epochs}-s{seed}"

    def build(tmp: Path) -> None:
        start = time.perf_counter()
        bert = load_model(base)
        head = finetune(bert, load_tokenizer(base), rotten_tomatoes_split()[0], epochs, seed=seed)
        w = BertClassifierWeights.from_hf(bert, head)
        w.meta = {"base": BASES[base], "finetune_seconds": time.perf_counter() - start}
        save_classifier(w, PruningConfig.none(w.layers), tmp)

    w, _none = load_classifier(atomic_materialize(stage, build))
    return w


def relearn_thresholds(
    path: str | Path, lam: float = DEFAULT_LAMBDA, threshold_steps: int = 150, seed: int = 0
) -> Path:
    """Learn new thresholds (128 and 512 tokens) for an existing classifier folder, in place:
    how to try another lambda without fine-tuning again."""
    from privformer.models.registry import load_tokenizer
    from privformer.protocols.cipherprune.format import encoder_name, load_classifier

    path = Path(path)
    w, _old = load_classifier(path)
    tok = load_tokenizer(encoder_name(w))
    pruning = learn_thresholds(
        w,
        tok,
        rotten_tomatoes_split()[0],
        n=int(w.meta.get("n", 128)),
        lam=lam,
        steps=threshold_steps,
        seed=seed,
    )
    pruning_long = learn_thresholds(
        w, tok, imdb_split()[0], n=LONG_N, lam=lam, steps=threshold_steps // 3, batch=2, seed=seed
    )
    w.meta.update({"lambda": lam, "threshold_steps": threshold_steps})
    (path / "pruning.json").write_text(pruning.to_json())
    (path / f"pruning-{LONG_N}.json").write_text(pruning_long.to_json())
    config = json.loads((path / "config.json").read_text())
    config["meta"] = w.meta
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path
