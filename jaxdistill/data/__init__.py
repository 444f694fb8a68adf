"""Input pipelines: TFDS array_record sources, or the user's own files, read through grain.

Training batches come from a checkpointable grain iterator over global batch indices: a seeded
permutation per epoch, of which each process reads only its own rows of every global batch.
Evaluation reads a whole split in fixed-size batches, the last one padded and masked, so one
compiled eval step serves every batch.

Two kinds of dataset: images with class labels (`image`, `label`), and text (`text`), tokenized
with `config.data.tokenizer` (see `text_tokenizers`) in one of these `config.data.format`s:
- `sentences`: each example alone, as `input_ids` and `attention_mask` of `config.data.max_length`
  tokens (task "sentences", the default for sentence datasets);
- `packed` and `prompts`: documents as language-model rows (task "lm", see `lm_formats`; `packed`
  is the default for other text datasets). Rows are computed once per split and kept in memory.
`DatasetSpec.inputs` names what the models take, in order.

Data from files (`config.data.files`: JSON lines, Parquet, text, a `datasets` directory; see
`files`) is language-model data of one kind: documents, prompts with completions, or chat
conversations, the loss on completions and assistant turns only. Its rows are made as above
(`packed` by default); `summary` says what became of its examples (truncated, dropped).
"""

from __future__ import annotations

from jaxdistill.data.batches import EpochShuffle, eval_batches, reader, train_iterator
from jaxdistill.data.info import DatasetSpec, num_examples, spec, steps_per_epoch, summary
from jaxdistill.data.sources import BUNDLED, builder, generative, source
from jaxdistill.data.text import FORMATS as TEXT_FORMATS
from jaxdistill.data.text import special_ids, text_format, tokenizer, transformers_tokenizer

__all__ = ["BUNDLED", "TEXT_FORMATS", "DatasetSpec", "EpochShuffle", "builder", "eval_batches",
           "generative", "num_examples", "reader", "source", "special_ids", "spec",
           "steps_per_epoch", "summary", "text_format", "tokenizer", "train_iterator",
           "transformers_tokenizer"]
