"""Why a model predicted what it did: each input feature's signed share of the predicted class's logit.

Two methods, by model family:

  exact                 the bag (models/fasttext.py) and linear (models/linear.py) models: a
                        document's logit is linear in the rows of its bag, logit_c = b_c +
                        sum_r w_r (W_c . row_r), so the contribution of row r is w_r (W_c .
                        row_r), its weight in the bag (fastText's 1/n or TF-IDF share; the
                        linear model's l2-normalised TF-IDF weight) times its score for the
                        class. The contributions plus the bias (``baseline``) are the logit, up
                        to float error; dropout is off (the module is put in eval mode).
  integrated_gradients  the LSTM, the Transformer and the Hugging Face encoders: Captum's
                        IntegratedGradients on the output of the input embedding layer (Sundararajan
                        et al. 2017), along the straight line from the baseline document's
                        embeddings to the document's, summed over the embedding dimensions: one
                        number per input position. The baseline is the document with every token
                        replaced by the padding id (the padding row of the LSTM's and the
                        Transformer's tables is zeros, so their baseline is the zero embedding);
                        a pretrained tokenizer's structural tokens ([CLS], [SEP]) are kept, so
                        the baseline is a well-formed empty input and those tokens get exactly 0.
                        ``baseline`` is the baseline's logit (its embeddings run in the
                        document's place: the same length and attention mask; the Transformer masks
                        padding by id, so the ids stay the document's), and the completeness gap |baseline
                        + sum(contributions) - logit| is Captum's convergence delta: it shrinks
                        with ``steps`` (Gauss-Legendre quadrature; DEFAULT_STEPS keeps it well
                        under 5% of |logit - baseline| on the tests' models, tests/test_explain.py).

Contributions are in logit units, before calibration (the shipped model divides every logit
by its temperature T, so a contribution to the calibrated logit is this one over T).

What a feature is: the fastText model's rows are its words, in document order, each followed by
the hashed bigram row it closes ("w1 w2"); the linear model's are the document's distinct
n-grams (a bag: the n-gram encoder keeps no order; they come in vocabulary order), its
<unk> n-grams left out (they weigh nothing); a sequence model's are its input positions, in order
(a pretrained tokenizer's subwords and special tokens, as ``convert_ids_to_tokens`` shows them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from textclf.data.datamodule import clip_documents
from textclf.data.encoded import PAD_ID, UNK_ID
from textclf.errors import TextclfError
from textclf.models.fasttext import FastText, bigram_ids
from textclf.models.linear import LinearClassifier

if TYPE_CHECKING:
    from textclf.encoders.base import TextEncoder
    from textclf.models.classifier import TextClassifier

# Integration steps (Gauss-Legendre points): the completeness gap stays under 5% of the logit
# difference on the tests' LSTM, Transformer and BERT (tests/test_explain.py).
DEFAULT_STEPS = 64
# Interpolated documents per forward pass of integrated gradients (bounds memory on long documents).
INTERNAL_BATCH_SIZE = 32
EXACT, INTEGRATED_GRADIENTS = "exact", "integrated_gradients"


@dataclass(frozen=True)
class Explanation:
    predicted: int  # the class explained (the predicted one unless a target was given)
    logit: float  # that class's logit (before calibration)
    baseline: float  # exact models: the bias; integrated gradients: the baseline input's logit
    tokens: list[str]  # the document's features as users read them, in document order (see the module's doc)
    contributions: list[float]  # one signed contribution per entry of tokens, toward ``predicted``
    gap: float  # |baseline + sum(contributions) - logit|: float error for exact models
    method: str  # EXACT or INTEGRATED_GRADIENTS

    def totals(self) -> dict[str, float]:
        """{token: the sum of its contributions}, over every position it holds, in the order
        the tokens first appear (what a word did to the prediction, wherever it stands)."""
        summed: dict[str, float] = {}
        for token, contribution in zip(self.tokens, self.contributions):
            summed[token] = summed.get(token, 0.0) + contribution
        return summed

    def top(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` distinct tokens whose summed contributions (``totals``) are largest in
        absolute value, largest first (ties in document order)."""
        ranked = sorted(self.totals().items(), key=lambda item: -abs(item[1]))
        return ranked[:k]


def explain_texts(
    module: TextClassifier,
    encoder: TextEncoder,
    texts: list[str],
    max_len: int | None,
    steps: int = DEFAULT_STEPS,
) -> list[Explanation]:
    """Each text encoded as the shipped model encodes it (cut to ``max_len`` tokens, as
    data.datamodule.tokens_kept gives for the model) and explained (``explain_batch``)."""
    encoded = encoder.encode(texts)
    batch = clip_documents(encoded["tokens"], encoded["offsets"], encoded["lengths"], max_len)
    return explain_batch(module, encoder, batch, steps=steps)


def explain_batch(
    module: TextClassifier,
    encoder: TextEncoder,
    batch: Mapping[str, torch.Tensor],
    targets: torch.Tensor | None = None,
    steps: int = DEFAULT_STEPS,
) -> list[Explanation]:
    """One Explanation per document of ``batch`` (tokens (T,), offsets (B,), lengths (B,), as
    data.datamodule.clip_documents makes it; other keys, labels, are ignored), of class
    ``targets`` (B,) or, when None, of the class the model predicts. The module is put in eval
    mode (no dropout) for the explanation, and back in the mode it was in after."""
    if steps < 1:
        raise TextclfError(f"explain: steps={steps}: integrated gradients need at least 1 step")
    inputs = {key: batch[key].to(module.device) for key in ("tokens", "offsets", "lengths")}
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            logits = module(inputs).double()  # (B, C)
        chosen = logits.argmax(dim=1) if targets is None else targets.to(logits.device).long()
        backbone = module.backbone
        if isinstance(backbone, FastText):
            return _fasttext(backbone, encoder, inputs, logits, chosen)
        if isinstance(backbone, LinearClassifier):
            return _linear(backbone, encoder, inputs, logits, chosen)
        return _integrated_gradients(module, encoder, inputs, logits, chosen, steps)
    finally:
        module.train(training)


def _documents(lengths: torch.Tensor) -> torch.Tensor:
    """lengths (B,) -> (T,) the document of each position of the flat tokens."""
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)


@torch.no_grad()
def _fasttext(
    backbone: FastText,
    encoder: TextEncoder,
    batch: Mapping[str, torch.Tensor],
    logits: torch.Tensor,
    chosen: torch.Tensor,
) -> list[Explanation]:
    tokens, offsets, lengths = batch["tokens"], batch["offsets"], batch["lengths"]
    document = _documents(lengths)  # (T,)
    # Each word row's weight in its document's sum, before the division by the total (FastText.forward).
    if backbone.weighting == "tfidf":
        word_weights = backbone._word_weights(tokens, lengths).double()  # (T,)
    else:
        word_weights = torch.ones(tokens.numel(), dtype=torch.float64, device=tokens.device)
    total = torch.zeros(lengths.numel(), dtype=torch.float64, device=tokens.device)
    total.index_add_(0, document, word_weights)
    if backbone.ngram_buckets > 0:
        pairs, _, pair_lengths = bigram_ids(tokens, offsets, lengths, backbone.vocab_size, backbone.ngram_buckets)
        total = total + pair_lengths
    else:
        pairs, pair_lengths = tokens.new_zeros(0), torch.zeros_like(lengths)
    total = total.clamp(min=1)
    weight = backbone.classifier.weight.double()  # (C, D)
    bias = backbone.classifier.bias.double()  # (C,)
    table = backbone.embedding.weight
    words = table[tokens].double() @ weight.T  # (T, C) each word row's score per class
    bigrams = table[pairs].double() @ weight.T  # (P, C)
    shown = encoder.display_tokens(tokens.tolist())
    explanations = []
    word_start, pair_start = 0, 0
    for b, (n, m) in enumerate(zip(lengths.tolist(), pair_lengths.tolist())):
        c = int(chosen[b])
        word_share = (word_weights[word_start : word_start + n] * words[word_start : word_start + n, c]) / total[b]
        pair_share = bigrams[pair_start : pair_start + m, c] / total[b]  # each bigram weighs 1
        names, contributions = [], []
        for i in range(n):  # word i, then the bigram it closes (words i - 1 and i)
            names.append(shown[word_start + i])
            contributions.append(float(word_share[i]))
            if i > 0 and m:
                names.append(f"{shown[word_start + i - 1]} {shown[word_start + i]}")
                contributions.append(float(pair_share[i - 1]))
        explanations.append(_exact(c, float(logits[b, c]), float(bias[c]), names, contributions))
        word_start, pair_start = word_start + n, pair_start + m
    return explanations


@torch.no_grad()
def _linear(
    backbone: LinearClassifier,
    encoder: TextEncoder,
    batch: Mapping[str, torch.Tensor],
    logits: torch.Tensor,
    chosen: torch.Tensor,
) -> list[Explanation]:
    features, offsets, weights = backbone.document_vectors(batch["tokens"], batch["lengths"])  # (U,), (B,), (U,)
    ends = torch.cat([offsets[1:], offsets.new_tensor([features.numel()])])
    table = backbone.weight.weight.double()  # (V, C)
    bias = backbone.bias.double()
    explanations = []
    for b, (start, end) in enumerate(zip(offsets.tolist(), ends.tolist())):
        c = int(chosen[b])
        ids, share = features[start:end], weights[start:end].double()
        kept = share != 0  # <pad> and <unk> weigh nothing (idf 0): not features
        ids, share = ids[kept], share[kept]
        contributions = (share * table[ids, c]).tolist()
        explanations.append(
            _exact(c, float(logits[b, c]), float(bias[c]), encoder.display_tokens(ids.tolist()), contributions)
        )
    return explanations


def _exact(c: int, logit: float, bias: float, tokens: list[str], contributions: list[float]) -> Explanation:
    gap = abs(bias + sum(contributions) - logit)
    return Explanation(c, logit, bias, tokens, contributions, gap, EXACT)


def embedding_layer(backbone: nn.Module) -> nn.Module:
    """The layer whose output integrated gradients interpolate: the token embedding table (of
    the LSTM and the Transformer; a pretrained encoder's input embeddings)."""
    from textclf.models.hf import HuggingFaceClassifier

    if isinstance(backbone, HuggingFaceClassifier):
        return backbone._base_encoder().get_input_embeddings()
    layer = getattr(backbone, "embedding", None)
    if not isinstance(layer, nn.Embedding):
        raise TextclfError(f"explain: cannot explain a {type(backbone).__name__} (no token embedding to attribute to)")
    return layer


def _baseline_ids(backbone: nn.Module, encoder: TextEncoder, ids: torch.Tensor) -> torch.Tensor:
    """ids (n,) -> the baseline document: every token the padding id, but a pretrained
    tokenizer's structural tokens ([CLS], [SEP]: its special ids other than <unk>), kept."""
    from textclf.models.hf import HuggingFaceClassifier

    if not isinstance(backbone, HuggingFaceClassifier):
        return torch.full_like(ids, PAD_ID)
    unknown = getattr(encoder, "tokenizer", None)
    structural = encoder.placeholder_ids() - {getattr(unknown, "unk_token_id", None)}
    keep = torch.isin(ids, torch.tensor(sorted(structural), dtype=ids.dtype, device=ids.device))
    return torch.where(keep, ids, torch.full_like(ids, backbone.pad_id))


@contextlib.contextmanager
def _gradients_flow(backbone: nn.Module) -> Iterator[None]:
    """Gradients reach the input embeddings: a frozen pretrained encoder runs without them
    (HuggingFaceClassifier.embed), so it is unfrozen meanwhile (its weights still take no
    gradient: only the embeddings' values are differentiated); cuDNN's RNN, which runs
    backward only in training mode, is off (eval mode keeps dropout off)."""
    frozen = getattr(backbone, "freeze_encoder", None)
    if frozen:
        backbone.freeze_encoder = False
    try:
        with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            yield
    finally:
        if frozen:
            backbone.freeze_encoder = frozen


def _layer_output(module: TextClassifier, layer: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """What ``layer`` outputs while ``module`` runs on ``batch`` (no gradients)."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _module, _inputs, output: seen.append(output.detach()))
    try:
        with torch.no_grad():
            module(batch)
    finally:
        handle.remove()
    return seen[0]


def _copies(ids: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """k copies of the document ``ids`` (n,), as one flat batch."""
    n = ids.numel()
    return {
        "tokens": ids.repeat(k),
        "offsets": torch.arange(k, device=ids.device) * n,
        "lengths": torch.full((k,), n, dtype=torch.int64, device=ids.device),
    }


def _integrated_gradients(
    module: TextClassifier,
    encoder: TextEncoder,
    batch: Mapping[str, torch.Tensor],
    logits: torch.Tensor,
    chosen: torch.Tensor,
    steps: int,
) -> list[Explanation]:
    """One document at a time: its embedding layer's output E (R, L, D) (R rows: 1, or a long
    document's windows for a pretrained model) and the baseline's E0 are computed once; Captum
    then runs the model on batches of interpolations E0 + a (E - E0), put in place of the
    layer's output by a forward hook, and integrates the gradients."""
    from captum.attr import IntegratedGradients

    backbone = module.backbone
    layer = embedding_layer(backbone)
    tokens, lengths = batch["tokens"], batch["lengths"]
    explanations = []
    start = 0
    for b, n in enumerate(lengths.tolist()):
        ids = tokens[start : start + n]
        start += n
        c = int(chosen[b])
        shown = encoder.display_tokens(ids.tolist())
        reference = _baseline_ids(backbone, encoder, ids)
        if n == 0 or torch.equal(ids, reference):  # nothing differs from the baseline: nothing to attribute
            logit = float(logits[b, c])
            explanations.append(Explanation(c, logit, logit, shown, [0.0] * n, 0.0, INTEGRATED_GRADIENTS))
            continue
        embedded = _layer_output(module, layer, _copies(ids, 1))  # (R, L, D)
        base = _layer_output(module, layer, _copies(reference, 1))

        def forward(interpolated: torch.Tensor, ids: torch.Tensor = ids) -> torch.Tensor:
            """(k, R, L, D) interpolated embeddings -> (k, C) logits of k copies of the document."""
            k = interpolated.size(0)
            replaced = interpolated.reshape(k * interpolated.size(1), *interpolated.shape[2:])
            handle = layer.register_forward_hook(lambda _module, _inputs, _output: replaced)
            try:
                return module(_copies(ids, k))
            finally:
                handle.remove()

        with torch.no_grad():  # the baseline's embeddings in the document's place (its length, its attention mask)
            baseline_logit = float(forward(base.unsqueeze(0))[0, c])
        with _gradients_flow(backbone):
            attributions, delta = IntegratedGradients(forward).attribute(
                embedded.unsqueeze(0),
                baselines=base.unsqueeze(0),
                target=c,
                n_steps=steps,
                internal_batch_size=INTERNAL_BATCH_SIZE,
                return_convergence_delta=True,
            )
        per_position = attributions[0].sum(dim=-1).double()  # (R, L)
        contributions = _positions(backbone, per_position, n).tolist()
        explanations.append(
            Explanation(
                c, float(logits[b, c]), baseline_logit, shown, contributions, abs(float(delta)), INTEGRATED_GRADIENTS
            )
        )
    return explanations


def _positions(backbone: nn.Module, per_position: torch.Tensor, n: int) -> torch.Tensor:
    """(R, L) attributions of the embedding layer's rows -> (n,) one per token of the document:
    a pretrained model's rows are the document's windows of max_len tokens, one after the
    other (models/hf.py); a token past what the model reads (beyond its max_len) gets 0."""
    flat = per_position.reshape(-1) if per_position.size(0) == 1 else None
    if flat is None:
        window = backbone.max_len
        flat = per_position.new_zeros(per_position.size(0) * window)
        for r in range(per_position.size(0)):
            width = min(window, per_position.size(1))
            flat[r * window : r * window + width] = per_position[r, :width]
    out = per_position.new_zeros(n)
    kept = min(n, flat.numel())
    out[:kept] = flat[:kept]
    return out


def top_features(
    module: TextClassifier, encoder: TextEncoder, per_class: int
) -> dict[str, list[tuple[str, float]]] | None:
    """{class index as a string: its ``per_class`` strongest features, [(feature, weight)], the
    largest first} for the bag and linear models; None for the others (their features have no
    weight of their own). A feature's weight for class c is what one unit of it in a document
    adds to logit c, less its mean over the classes (the softmax ignores what every class
    shares): fastText's W_c . row for each word of the vocabulary (its hashed bigram rows have
    no name: several bigrams share a row), the linear model's W[feature, c]. <pad> and <unk>
    are left out. The caller names the classes (labels.json)."""
    backbone = module.backbone
    with torch.no_grad():
        if isinstance(backbone, FastText):
            scores = backbone.embedding.weight[: backbone.vocab_size].double() @ backbone.classifier.weight.double().T
        elif isinstance(backbone, LinearClassifier):
            scores = backbone.weight.weight.double().clone()
        else:
            return None
        scores = scores - scores.mean(dim=1, keepdim=True)  # (V, C)
        scores[: UNK_ID + 1] = float("-inf")
        k = min(per_class, max(scores.size(0) - UNK_ID - 1, 0))
        values, ids = scores.topk(k, dim=0)  # (k, C)
    return {
        str(c): list(zip(encoder.display_tokens(ids[:, c].tolist()), values[:, c].tolist()))
        for c in range(scores.size(1))
    }
