"""Web-data curation for Llama 3 pre-training (paper section 3.1).

One module per job: ``readers`` (WARC/HTML/JSONL/parquet), ``extract`` (HTML -> text), ``url_filter`` and
``pii`` (safety), ``domains`` (code/math/general), ``langid`` (fastText lid.176), ``heuristics``,
``dedup_url`` / ``dedup_minhash`` / ``dedup_line``, ``quality`` (+ ``train_quality``), ``topics``, ``mix``,
``shards`` (tokenize, pack, read back), ``config``, ``stage_io`` (task shares, parts, counted filters),
``pipeline`` (the stages as datatrove pipelines), ``executors`` (local, Slurm or Ray), ``report`` and ``cli``
(``hf-llama3 curate``).
"""
