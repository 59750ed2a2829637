"""Per-sample losses of Hugging Face models, computed as the models compute their own loss.

A Hugging Face model with ``labels`` returns one number for a batch: for language-model heads the mean over every
counted token of the batch (labels other than ``-100``), so a long sample weighs more than a short one. losslens
keeps per-sample losses (each sample's mean over its own counted tokens) and the token counts as weights
(:attr:`losslens.record.Measurement.weights`), so the recorded means are the models' numbers exactly:
``Σ tokens·loss / Σ tokens`` over a batch is the model's loss on that batch.

=========================  ======================================  ==============================================
head                       models (``type(model).__name__``)       per-sample loss
=========================  ======================================  ==============================================
``causal_lm``              ``*ForCausalLM``, ``*LMHeadModel``      token cross-entropy, labels shifted by one
``seq2seq_lm``             ``*ForConditionalGeneration``,          token cross-entropy on the decoder labels
                           ``*ForSeq2SeqLM``, ``*ForSpeechSeq2Seq``  (the model shifts them into its inputs)
``masked_lm``              ``*ForMaskedLM``                        token cross-entropy on the masked positions
``token_classification``   ``*ForTokenClassification``             token cross-entropy over ``num_labels``
``sequence_classification`` ``*ForSequenceClassification``         ``config.problem_type``: cross-entropy,
                                                                   squared error, or binary cross-entropy
                                                                   averaged over labels (unweighted samples)
=========================  ======================================  ==============================================

The head is read from the model's ``loss_type`` (transformers >= 4.46) or its class name; a PEFT model is read
through its base model. Any other head is refused by :func:`default_loss` in one line asking for ``loss_fn=``.
This module imports torch (not transformers).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["TokenCrossEntropy", "SequenceClassificationLoss", "default_loss", "model_head", "HEADS"]

#: Class-name endings of each head, tried in order; ``loss_type`` values of transformers name the same heads.
HEADS: dict[str, tuple[str, ...]] = {
    "causal_lm": ("ForCausalLM", "LMHeadModel"),
    "masked_lm": ("ForMaskedLM",),
    "seq2seq_lm": ("ForConditionalGeneration", "ForSeq2SeqLM", "ForSpeechSeq2Seq"),
    "token_classification": ("ForTokenClassification",),
    "sequence_classification": ("ForSequenceClassification",),
}
_LOSS_TYPES = {"ForCausalLM": "causal_lm", "ForMaskedLM": "masked_lm", "ForTokenClassification":
               "token_classification", "ForSequenceClassification": "sequence_classification"}

#: Label value the models ignore (``torch.nn.CrossEntropyLoss().ignore_index``).
IGNORE_INDEX = -100


class TokenCrossEntropy:
    """Token cross-entropy of a language-model or token-classification head, per sample, with token counts.

    Calling it, ``loss(logits, labels)``, gives the model's own loss on the batch: the mean over every counted
    token (a scalar tensor). :meth:`per_sample_tokens` gives each sample's mean over its counted tokens and the
    counts, the form the recorder stores (:attr:`losslens.record.Measurement.weights`).

    Parameters
    ----------
    head : str
        One of :data:`HEADS` but ``sequence_classification``.
    shift : bool
        Predict token ``t+1`` from position ``t`` (causal language models): ``logits[:, :-1]`` against
        ``labels[:, 1:]``, as ``transformers``' ``ForCausalLMLoss``.
    ignore_index : int
        Label value that is not counted (``-100``, the models' convention).

    Logits are upcast to float32 before the softmax, as the models do.
    """

    def __init__(self, head: str, *, shift: bool = False, ignore_index: int = IGNORE_INDEX) -> None:
        self.head, self.shift, self.ignore_index = head, bool(shift), int(ignore_index)
        #: The loss's name for the recorder (its kind, and the label-entropy baseline).
        self.__name__ = "cross_entropy"

    def __repr__(self) -> str:
        return f"TokenCrossEntropy(head={self.head!r}, shift={self.shift})"

    def _pairs(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise TypeError(f"{self!r}: expected logits and labels tensors, got {type(logits).__name__} and "
                            f"{type(labels).__name__}")
        labels = labels.to(logits.device)
        if self.shift:
            logits, labels = logits[:, :-1, :], labels[:, 1:]
        if logits.shape[:2] != labels.shape[:2] or labels.ndim != 2:
            raise ValueError(f"{self!r}: logits of shape {tuple(logits.shape)} do not match labels of shape "
                             f"{tuple(labels.shape)} (batch, tokens)")
        return logits, labels

    def per_sample_tokens(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's mean token loss and its number of counted tokens.

        Parameters
        ----------
        logits : torch.Tensor, shape (batch, tokens, vocabulary or labels)
        labels : torch.Tensor, shape (batch, tokens)
            Token ids or label ids; ``ignore_index`` where not counted.

        Returns
        -------
        losses, tokens : torch.Tensor, shape (batch,), float32
            ``losses[i]`` is 0 where sample ``i`` has no counted token (its weight ``tokens[i]`` is 0).

        Raises
        ------
        ValueError
            If the shapes do not match.
        """
        logits, labels = self._pairs(logits, labels)
        b, n = labels.shape
        per_token = F.cross_entropy(logits.reshape(b * n, -1).float(), labels.reshape(-1).long(),
                                    ignore_index=self.ignore_index, reduction="none").reshape(b, n)
        tokens = (labels != self.ignore_index).sum(dim=1).float()
        return per_token.sum(dim=1) / tokens.clamp(min=1.0), tokens

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The model's loss on the batch: the mean over all counted tokens (NaN when none is counted)."""
        losses, tokens = self.per_sample_tokens(logits, labels)
        total = tokens.sum()
        return (losses * tokens).sum() / total if float(total) > 0 else torch.tensor(math.nan)


class SequenceClassificationLoss:
    """The loss of ``*ForSequenceClassification`` models, per sample, by ``config.problem_type``.

    ``"regression"`` (or ``num_labels == 1`` without a problem type): squared error; ``"single_label_classification"``
    (integer labels): cross-entropy; ``"multi_label_classification"``: binary cross-entropy with logits, each
    sample's mean over its labels. The same choice as ``transformers``' sequence-classification heads.

    Parameters
    ----------
    problem_type : str or None
        ``config.problem_type``; None: inferred per batch as the models do (regression when ``num_labels == 1``,
        single-label for integer labels, else multi-label).
    num_labels : int
    """

    def __init__(self, problem_type: str | None, num_labels: int) -> None:
        self.problem_type, self.num_labels = problem_type, int(num_labels)
        self.__name__ = {"regression": "mse_loss", "multi_label_classification": "binary_cross_entropy_with_logits",
                         "single_label_classification": "cross_entropy"}.get(problem_type or "", "cross_entropy")

    def __repr__(self) -> str:
        return f"SequenceClassificationLoss(problem_type={self.problem_type!r}, num_labels={self.num_labels})"

    def _kind(self, labels: torch.Tensor) -> str:
        if self.problem_type:
            return self.problem_type
        if self.num_labels == 1:
            return "regression"
        return "single_label_classification" if labels.dtype in (torch.long, torch.int) else \
            "multi_label_classification"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Per-sample losses, shape ``(batch,)``, with ``reduction="none"``; else their mean."""
        labels = labels.to(logits.device)
        kind = self._kind(labels)
        if kind == "regression":
            lg = logits.float().reshape(len(logits), -1)
            v = ((lg - labels.float().reshape(len(labels), -1)) ** 2).mean(dim=1)
        elif kind == "single_label_classification":
            v = F.cross_entropy(logits.float().reshape(-1, self.num_labels), labels.reshape(-1).long(),
                                reduction="none")
        else:
            v = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
            v = v.reshape(len(v), -1).mean(dim=1)
        return v if reduction == "none" else v.mean()


def model_head(model: Any) -> str | None:
    """The head of a Hugging Face model (a key of :data:`HEADS`), or None when it is none of them.

    Read from the model's ``loss_type`` where transformers sets one, else from its class name; a PEFT model
    (``get_base_model``) is read through the model it adapts.
    """
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    if getattr(getattr(base, "config", None), "is_encoder_decoder", False):
        name = type(base).__name__
        return "seq2seq_lm" if name.endswith(HEADS["seq2seq_lm"]) else None
    loss_type = getattr(base, "loss_type", None)
    if isinstance(loss_type, str) and loss_type in _LOSS_TYPES:
        return _LOSS_TYPES[loss_type]
    name = type(base).__name__
    for head, ends in HEADS.items():
        if name.endswith(ends):
            return head
    return None


def default_loss(model: Any) -> TokenCrossEntropy | SequenceClassificationLoss:
    """The loss a Hugging Face model computes itself, as a per-sample loss for the recorder.

    Raises
    ------
    ValueError
        One line naming the model's class, when its head is none of :data:`HEADS` (pass ``loss_fn=``).
    """
    head = model_head(model)
    config = getattr(model, "config", None)
    if head is None:
        raise ValueError(f"loss_fn: losslens does not know the loss of {type(model).__name__} (known heads: "
                         f"{', '.join(HEADS)}); pass loss_fn=lambda logits, labels: per-sample losses to LossLens")
    if head == "sequence_classification":
        return SequenceClassificationLoss(getattr(config, "problem_type", None),
                                          int(getattr(config, "num_labels", 2) or 2))
    return TokenCrossEntropy(head, shift=head == "causal_lm")
