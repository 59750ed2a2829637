"""Hugging Face ``Trainer`` adapter: record a run with the :class:`LossLens` callback.

::

    from losslens.transformers import LossLens

    lens = LossLens(probe=train_ds, val=eval_ds, run="bert-sst2", store="losslens.db")
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, callbacks=[lens])
    trainer.train()
    Report.from_run(lens).print()   # from losslens.report import Report

What is recorded (the protocol of :class:`losslens.torch.LossLens`, whose machinery this
callback drives):

* **loss windows** (``on_log``): the Trainer logs the mean training loss of the
  last ``logging_steps`` optimizer steps (already averaged over processes by the
  Trainer). Each window becomes one step row with ``span`` = its number of
  optimizer steps, its batch size = the samples it covers, and its position at
  the window's centre in fractional epochs (the Trainer stamps it at its end);
* **probes** (``on_evaluate``): at every evaluation the eval-mode loss ``C`` on a
  fixed, seeded subset of the training set (the probe set), the train-mode loss
  ``T`` (dropout on) on the same samples in batches of the per-device training
  batch size, and the validation loss ``V``, all per sample, under the torch
  adapter's protection (no gradient, forked and restored RNGs, module flags and
  buffers restored). Each evaluation closes one record "epoch": its ``index`` counts
  evaluations, its ``position`` is the Trainer's fractional epoch
  (``eval_strategy="epoch"`` gives the usual epochs); ``R`` is the
  sample-weighted mean of the windows logged since the previous evaluation;
* under ``torchrun`` (a ``torch.distributed`` process group) the passes are
  sharded over the ranks and gathered, and rank 0 alone writes the store
  (docs/distributed.md).

The model's forward is called as ``model(**inputs).logits`` with ``inputs`` the
collated batch without ``"labels"`` (with them for an encoder-decoder model, which builds its
decoder inputs from them). Language models are measured per token: each sample's loss is
the mean over its counted tokens and every mean over samples is weighted by those counts
(:mod:`losslens.transformers._losses`), so ``C`` and ``V`` are on the scale of the Trainer's
``loss`` and ``eval_loss``. This module imports transformers and torch.
"""

from ._callback import STATE_FILE, EarlyStoppingCallback, LossLens, logits_forward, validation_set_name
from ._losses import HEADS, SequenceClassificationLoss, TokenCrossEntropy, default_loss, model_head

__all__ = ["LossLens", "EarlyStoppingCallback", "logits_forward", "STATE_FILE", "TokenCrossEntropy",
           "SequenceClassificationLoss", "default_loss", "model_head", "HEADS", "validation_set_name"]
